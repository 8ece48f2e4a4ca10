#include "server/auth/auth.h"

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace sigmatune::server {
namespace {

namespace fs = std::filesystem;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::Pair;
using ::testing::UnorderedElementsAre;

// A fresh, canonical directory under $TEST_TMPDIR.
std::string TempDir(const std::string& name) {
  const char* tmp = std::getenv("TEST_TMPDIR");
  const fs::path dir = fs::path(tmp != nullptr ? tmp : "/tmp") / ("auth_test_" + name);
  fs::remove_all(dir);
  fs::create_directories(dir);
  return fs::canonical(dir).string();
}

void WriteFile(const std::string& path, const std::string& text) {
  fs::create_directories(fs::path(path).parent_path());
  std::ofstream out(path);
  out << text;
}

TEST(HashTokenTest, KnownVector) {
  EXPECT_EQ(HashToken("abc"),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(HashToken(""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

TEST(NewTokenTest, SixtyFourHexDigitsAndFresh) {
  absl::StatusOr<std::string> a = NewToken();
  absl::StatusOr<std::string> b = NewToken();
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(a->size(), 64u);
  EXPECT_EQ(a->find_first_not_of("0123456789abcdef"), std::string::npos);
  EXPECT_NE(*a, *b);
}

TEST(TenantRegistryTest, OpenAcceptsEveryoneAsLocal) {
  TenantRegistry registry = TenantRegistry::Open();
  EXPECT_FALSE(registry.enabled());
  registry.AddToken("alice", Role::kUser, "ignored");
  for (absl::string_view header : {"", "Basic x", "Bearer anything"}) {
    absl::StatusOr<Tenant> tenant = registry.Authenticate(header);
    ASSERT_TRUE(tenant.ok()) << tenant.status();
    EXPECT_EQ(tenant->name, "local");
    EXPECT_TRUE(tenant->Has(Role::kUser));
    EXPECT_TRUE(tenant->Has(Role::kWorker));
    EXPECT_TRUE(tenant->roots.empty());
  }
}

class TenantsFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = TempDir(::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::create_directories(dir_ + "/data/a");
    fs::create_directories(dir_ + "/data/b");
    fs::create_symlink(dir_ + "/data/a", dir_ + "/link_a");
  }

  absl::StatusOr<TenantRegistry> Load(const std::string& text) {
    WriteFile(dir_ + "/tenants.txt", text);
    return TenantRegistry::LoadFile(dir_ + "/tenants.txt");
  }

  std::string dir_;
};

TEST_F(TenantsFileTest, ParsesTenantsTokensAndRoots) {
  absl::StatusOr<TenantRegistry> registry = Load(absl::StrCat(
      "# tenants\n"
      "\n"
      "alice user ", HashToken("alice-1"), "   # her laptop\n",
      "alice\tuser ", HashToken("alice-2"), " ", dir_, "/link_a,", dir_, "/data/b/\n",
      "   \n",
      "bob worker ", HashToken("bob-w"), "\n",
      "bob user ", HashToken("bob-w"), "\n"));
  ASSERT_TRUE(registry.ok()) << registry.status();
  EXPECT_TRUE(registry->enabled());

  for (const char* token : {"alice-1", "alice-2"}) {
    absl::StatusOr<Tenant> alice = registry->Authenticate(absl::StrCat("Bearer ", token));
    ASSERT_TRUE(alice.ok()) << alice.status();
    EXPECT_EQ(alice->name, "alice");
    EXPECT_THAT(alice->roles, ElementsAre(Role::kUser));
    // Roots belong to the tenant, canonicalised (symlink resolved, trailing slash dropped).
    EXPECT_THAT(alice->roots, ElementsAre(dir_ + "/data/a", dir_ + "/data/b"));
  }
  absl::StatusOr<Tenant> bob = registry->Authenticate("Bearer bob-w");
  ASSERT_TRUE(bob.ok()) << bob.status();
  EXPECT_EQ(bob->name, "bob");
  EXPECT_THAT(bob->roles, UnorderedElementsAre(Role::kUser, Role::kWorker));
  EXPECT_TRUE(bob->roots.empty());
  // The scheme is case-insensitive; surrounding blanks are ignored.
  EXPECT_TRUE(registry->Authenticate("bearer  alice-1 ").ok());
}

TEST_F(TenantsFileTest, ReportsEveryMalformedLineWithFileAndLine) {
  const std::string h = HashToken("t");
  absl::StatusOr<TenantRegistry> registry = Load(absl::StrCat(
      "ok user ", h, "\n",                                               // 1
      "carol admin ", h, "\n",                                           // 2
      "dave user sha256:abcd\n",                                         // 3
      "erin user md5:", std::string(64, 'a'), "\n",                      // 4
      "frank user\n",                                                    // 5
      "# fine\n",                                                        // 6
      "gina worker ", h.substr(0, 70), "x\n",                            // 7
      "hank user ", h, " ", dir_, "/missing\n",                          // 8
      "ivan user ", h, " relative/dir\n",                                // 9
      "../evil user ", HashToken("u"), "\n",                             // 10
      "jane user ", HashToken("j"), " /a b c\n"));                       // 11
  ASSERT_FALSE(registry.ok());
  EXPECT_EQ(registry.status().code(), absl::StatusCode::kInvalidArgument);
  const std::string message(registry.status().message());
  const std::string file = dir_ + "/tenants.txt";
  EXPECT_THAT(message, HasSubstr(file + ":2: role must be user or worker, got 'admin'"));
  EXPECT_THAT(message, HasSubstr(file + ":3: token hash must be 'sha256:'"));
  EXPECT_THAT(message, HasSubstr(file + ":4: token hash must be 'sha256:'"));
  EXPECT_THAT(message, HasSubstr(file + ":5: expected '<tenant> <role>"));
  EXPECT_THAT(message, HasSubstr(file + ":7: token hash"));
  EXPECT_THAT(message, HasSubstr(file + ":8: data root '" + dir_ + "/missing' does not exist"));
  EXPECT_THAT(message, HasSubstr(file + ":9: data root 'relative/dir' must be an absolute"));
  EXPECT_THAT(message, HasSubstr(file + ":10: tenant name '../evil'"));
  EXPECT_THAT(message, HasSubstr(file + ":11: expected"));
  EXPECT_THAT(message, Not(HasSubstr(file + ":1:")));
  EXPECT_THAT(message, Not(HasSubstr(file + ":6:")));
}

TEST_F(TenantsFileTest, OneHashForTwoTenantsIsAnError) {
  absl::StatusOr<TenantRegistry> registry =
      Load(absl::StrCat("a user ", HashToken("x"), "\nb user ", HashToken("x"), "\n"));
  ASSERT_FALSE(registry.ok());
  EXPECT_THAT(registry.status().message(), HasSubstr(":2: the same token hash"));
}

TEST(TenantRegistryTest, MissingFileIsAnError) {
  EXPECT_FALSE(TenantRegistry::LoadFile("/nonexistent/tenants.txt").ok());
}

TEST_F(TenantsFileTest, AuthenticateFailuresAreDistinctAndNeverShowTheToken) {
  absl::StatusOr<TenantRegistry> registry =
      Load(absl::StrCat("alice user ", HashToken("s3cret-token"), "\n"));
  ASSERT_TRUE(registry.ok()) << registry.status();
  const std::vector<std::string> headers = {"", "Basic s3cret-token", "Bearer ", "Bearer    ",
                                            "Bearer wrong-s3cret-token", "s3cret-token",
                                            "Bearers3cret-token"};
  std::vector<std::string> messages;
  for (const std::string& header : headers) {
    absl::StatusOr<Tenant> tenant = registry->Authenticate(header);
    ASSERT_FALSE(tenant.ok()) << header;
    EXPECT_EQ(tenant.status().code(), absl::StatusCode::kUnauthenticated) << header;
    EXPECT_THAT(tenant.status().message(), Not(HasSubstr("s3cret"))) << header;
    messages.emplace_back(tenant.status().message());
  }
  EXPECT_THAT(messages[0], HasSubstr("missing"));
  EXPECT_THAT(messages[1], HasSubstr("not a Bearer token"));
  EXPECT_THAT(messages[2], HasSubstr("empty"));
  EXPECT_EQ(messages[3], messages[2]);
  EXPECT_THAT(messages[4], HasSubstr("unknown token"));
  EXPECT_EQ(messages[5], messages[1]);
  EXPECT_EQ(messages[6], messages[1]);
  EXPECT_NE(messages[0], messages[1]);
  EXPECT_NE(messages[1], messages[2]);
  EXPECT_NE(messages[2], messages[4]);

  absl::StatusOr<Tenant> alice = registry->Authenticate("Bearer s3cret-token");
  ASSERT_TRUE(alice.ok()) << alice.status();
  EXPECT_EQ(alice->name, "alice");
  EXPECT_THAT(alice->roles, ElementsAre(Role::kUser));
}

TEST_F(TenantsFileTest, AddTokenJoinsTheTenantAndItsRoots) {
  absl::StatusOr<TenantRegistry> registry =
      Load(absl::StrCat("alice user ", HashToken("a"), " ", dir_, "/data/a\n"));
  ASSERT_TRUE(registry.ok()) << registry.status();
  EXPECT_FALSE(registry->Authenticate("Bearer coordinator-token").ok());
  registry->AddToken("coordinator", Role::kWorker, "coordinator-token");
  registry->AddToken("alice", Role::kWorker, "a");
  registry->AddToken("alice", Role::kUser, "a2");

  absl::StatusOr<Tenant> coordinator = registry->Authenticate("Bearer coordinator-token");
  ASSERT_TRUE(coordinator.ok()) << coordinator.status();
  EXPECT_EQ(coordinator->name, "coordinator");
  EXPECT_THAT(coordinator->roles, ElementsAre(Role::kWorker));
  EXPECT_FALSE(coordinator->Has(Role::kUser));

  absl::StatusOr<Tenant> alice = registry->Authenticate("Bearer a");
  ASSERT_TRUE(alice.ok());
  EXPECT_THAT(alice->roles, ElementsAre(Role::kUser, Role::kWorker));
  absl::StatusOr<Tenant> alice2 = registry->Authenticate("Bearer a2");
  ASSERT_TRUE(alice2.ok());
  EXPECT_THAT(alice2->roots, ElementsAre(dir_ + "/data/a"));
}

class PathTest : public ::testing::Test {
 protected:
  void SetUp() override {
    base_ = TempDir(::testing::UnitTest::GetInstance()->current_test_info()->name());
    root_ = base_ + "/root";
    other_ = base_ + "/other";
    WriteFile(root_ + "/data/train.jsonl", "{}\n");
    WriteFile(root_ + "/data/b", "{}\n");
    WriteFile(root_ + "/model/config.json", "{}\n");
    WriteFile(other_ + "/secret.jsonl", "{}\n");
    WriteFile(base_ + "/outside/file", "x\n");
    fs::create_symlink(base_ + "/outside", root_ + "/escape");            // dir outside
    fs::create_symlink(base_ + "/outside/file", root_ + "/escape_file");  // file outside
    fs::create_symlink(root_ + "/data", root_ + "/data_link");            // inside
    fs::create_symlink(base_ + "/nowhere", root_ + "/dangling");
    roots_ = {root_};
  }

  absl::StatusOr<std::string> In(absl::string_view path) {
    return ResolveUnderRoots("datasets[0].path", path, roots_, PathUse::kInput);
  }
  absl::StatusOr<std::string> Out(absl::string_view path) {
    return ResolveUnderRoots("output_dir", path, roots_, PathUse::kOutput);
  }

  std::string base_, root_, other_;
  std::vector<std::string> roots_;
};

MATCHER_P(IsOkWith, value, "") {
  if (!arg.ok()) {
    *result_listener << arg.status();
    return false;
  }
  return *arg == value;
}

MATCHER_P(FailsWith, text, "") {
  if (arg.ok()) {
    *result_listener << "resolved to " << *arg;
    return false;
  }
  *result_listener << arg.status();
  return arg.status().code() == absl::StatusCode::kInvalidArgument &&
         absl::StrContains(arg.status().message(), text);
}

TEST_F(PathTest, AcceptsPathsInsideTheRoots) {
  EXPECT_THAT(In("data/train.jsonl"), IsOkWith(root_ + "/data/train.jsonl"));
  EXPECT_THAT(In("./data//train.jsonl"), IsOkWith(root_ + "/data/train.jsonl"));
  EXPECT_THAT(In(root_ + "/data/train.jsonl"), IsOkWith(root_ + "/data/train.jsonl"));
  EXPECT_THAT(In("model"), IsOkWith(root_ + "/model"));
  EXPECT_THAT(In("data_link/train.jsonl"), IsOkWith(root_ + "/data/train.jsonl"));
  EXPECT_THAT(In("100%done"), FailsWith("does not exist"));  // '%' alone is not an encoding
  EXPECT_THAT(Out("runs/job-1"), IsOkWith(root_ + "/runs/job-1"));
  EXPECT_THAT(Out("data_link/new/deeper"), IsOkWith(root_ + "/data/new/deeper"));
  EXPECT_THAT(Out("data"), IsOkWith(root_ + "/data"));
  EXPECT_THAT(Out(root_), IsOkWith(root_));
}

TEST_F(PathTest, RejectsEscapesWithTheFieldNamed) {
  EXPECT_THAT(In(other_ + "/secret.jsonl"), FailsWith("datasets[0].path: '"));
  EXPECT_THAT(In(other_ + "/secret.jsonl"), FailsWith("is outside every data root"));
  EXPECT_THAT(In(root_ + "2/x"), FailsWith("does not exist"));
  EXPECT_THAT(Out(root_ + "2/x"), FailsWith("outside every data root"));  // prefix is no parent
  EXPECT_THAT(In("../other/secret.jsonl"), FailsWith("'..'"));
  EXPECT_THAT(In("data/../data/train.jsonl"), FailsWith("'..'"));
  EXPECT_THAT(In(root_ + "/data/.."), FailsWith("'..'"));
  EXPECT_THAT(In("~/x"), FailsWith("'~'"));
  EXPECT_THAT(In("~"), FailsWith("'~'"));
  EXPECT_THAT(In("%2e%2e/x"), FailsWith("percent-encoded"));
  EXPECT_THAT(In("%2E%2e/x"), FailsWith("percent-encoded"));
  EXPECT_THAT(In("data%2Ftrain.jsonl"), FailsWith("percent-encoded"));
  EXPECT_THAT(In("a%5cb"), FailsWith("percent-encoded"));
  EXPECT_THAT(In("data%41"), FailsWith("percent-encoded"));
  EXPECT_THAT(In("data\\train.jsonl"), FailsWith("backslash"));
  EXPECT_THAT(In("data/train\n.jsonl"), FailsWith("control character"));
  EXPECT_THAT(In(std::string("data/\x7f", 6)), FailsWith("control character"));
  EXPECT_THAT(In(""), FailsWith("empty path"));
  EXPECT_THAT(Out(other_ + "/new"), FailsWith("outside every data root"));
  EXPECT_THAT(Out("/"), FailsWith("outside every data root"));
}

TEST_F(PathTest, FollowsSymlinksBeforeDeciding) {
  EXPECT_THAT(In("escape/file"), FailsWith("through a symlink to outside every data root"));
  EXPECT_THAT(In("escape_file"), FailsWith("through a symlink"));
  EXPECT_THAT(In("escape"), FailsWith("through a symlink"));
  EXPECT_THAT(Out("escape/new/dir"), FailsWith("through a symlink"));
  EXPECT_THAT(Out("escape"), FailsWith("through a symlink"));
  EXPECT_THAT(Out("dangling/x"), FailsWith("symlink that points nowhere"));
  EXPECT_THAT(Out("dangling"), FailsWith("symlink that points nowhere"));
  EXPECT_THAT(In("dangling"), FailsWith("does not exist"));
}

TEST_F(PathTest, InputsMustExistOutputsNeedAnExistingDirectoryAncestor) {
  EXPECT_THAT(In("data/missing.jsonl"), FailsWith("'data/missing.jsonl' does not exist"));
  EXPECT_THAT(In("data/train.jsonl/x"), FailsWith("does not exist"));
  EXPECT_THAT(Out("data/train.jsonl/x"),
              FailsWith("output_dir: 'data/train.jsonl/x': Not a directory"));
  EXPECT_THAT(Out("new/a/b/c"), IsOkWith(root_ + "/new/a/b/c"));
}

TEST_F(PathTest, SeveralRootsAndRelativeToTheFirst) {
  roots_ = {root_, other_};
  EXPECT_THAT(In(other_ + "/secret.jsonl"), IsOkWith(other_ + "/secret.jsonl"));
  EXPECT_THAT(In("secret.jsonl"), FailsWith("does not exist"));  // relative: the first root
  EXPECT_THAT(In("data/b"), IsOkWith(root_ + "/data/b"));
  roots_ = {other_, root_};
  EXPECT_THAT(In("secret.jsonl"), IsOkWith(other_ + "/secret.jsonl"));
  roots_.clear();
  EXPECT_THAT(In("data/b"), FailsWith("no data roots"));
}

TEST_F(PathTest, CanonicalRoots) {
  absl::StatusOr<std::vector<std::string>> roots =
      CanonicalRoots({root_ + "/", root_ + "/data_link", root_});
  ASSERT_TRUE(roots.ok()) << roots.status();
  EXPECT_THAT(*roots, ElementsAre(root_, root_ + "/data"));
  EXPECT_THAT(CanonicalRoots({root_ + "/nope"}).status().message(), HasSubstr("does not exist"));
  EXPECT_THAT(CanonicalRoots({root_ + "/data/b"}).status().message(),
              HasSubstr("is not a directory"));
}

TEST_F(PathTest, ResolveSpecPathsListsEveryProblemByField) {
  v1::JobSpec spec;
  spec.set_base_model("model");
  spec.mutable_calibration()->set_path("data/train.jsonl");
  spec.add_datasets()->set_path("data/train.jsonl");
  spec.add_datasets()->set_path("../other/secret.jsonl");
  spec.add_datasets()->set_path("data_link/b");
  spec.add_eval_datasets()->set_path("escape/file");
  spec.add_eval_datasets()->set_path(root_ + "/data/b");
  spec.set_cache_dir("none");
  std::vector<std::pair<std::string, std::string>> problems =
      ResolveSpecPaths(&spec, roots_, "runs/job-7");
  EXPECT_THAT(problems, ElementsAre(Pair("datasets[1].path", HasSubstr("'..'")),
                                    Pair("eval_datasets[0].path", HasSubstr("symlink"))));

  problems.clear();
  spec.mutable_datasets(1)->set_path("data/b");
  spec.mutable_eval_datasets(0)->set_path("data/b");
  problems = ResolveSpecPaths(&spec, roots_, "runs/job-7");
  EXPECT_TRUE(problems.empty());
  EXPECT_EQ(spec.base_model(), root_ + "/model");
  EXPECT_EQ(spec.calibration().path(), root_ + "/data/train.jsonl");
  EXPECT_EQ(spec.datasets(0).path(), root_ + "/data/train.jsonl");
  EXPECT_EQ(spec.datasets(1).path(), root_ + "/data/b");
  EXPECT_EQ(spec.datasets(2).path(), root_ + "/data/b");
  EXPECT_EQ(spec.eval_datasets(1).path(), root_ + "/data/b");
  EXPECT_EQ(spec.output_dir(), root_ + "/runs/job-7");
  EXPECT_EQ(spec.cache_dir(), "none");
}

TEST_F(PathTest, ResolveSpecPathsOutputsAndEmptyFields) {
  v1::JobSpec spec;
  spec.set_base_model("missing-model");
  spec.add_datasets();  // empty path: left for the spec validator
  spec.set_output_dir(other_ + "/out");
  spec.set_cache_dir("cache/%2e%2e");
  std::vector<std::pair<std::string, std::string>> problems =
      ResolveSpecPaths(&spec, roots_, "unused");
  EXPECT_THAT(problems, ElementsAre(Pair("base_model", HasSubstr("does not exist")),
                                    Pair("output_dir", HasSubstr("outside every data root")),
                                    Pair("cache_dir", HasSubstr("percent-encoded"))));

  v1::JobSpec ok;
  ok.set_base_model("model");
  ok.set_cache_dir("cache");
  EXPECT_TRUE(ResolveSpecPaths(&ok, roots_, "runs/x").empty());
  EXPECT_EQ(ok.cache_dir(), root_ + "/cache");
  EXPECT_EQ(ok.output_dir(), root_ + "/runs/x");
  EXPECT_FALSE(ok.has_calibration());
}

}  // namespace
}  // namespace sigmatune::server
