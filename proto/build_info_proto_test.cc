// Proves the protoc + grpc_cpp_plugin rule: messages round-trip and a service answers in process.
#include <memory>
#include <string>

#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "sigmatune/v1/build_info.grpc.pb.h"
#include "sigmatune/v1/build_info.pb.h"

namespace sigmatune {
namespace {

TEST(BuildInfoProtoTest, MessageRoundTrips) {
  v1::BuildInfo info;
  info.set_version("0.1.0");
  info.set_cuda_compiled(true);
  info.set_backend("cpu");
  std::string wire;
  ASSERT_TRUE(info.SerializeToString(&wire));
  v1::BuildInfo parsed;
  ASSERT_TRUE(parsed.ParseFromString(wire));
  EXPECT_EQ(parsed.version(), "0.1.0");
  EXPECT_TRUE(parsed.cuda_compiled());
  EXPECT_EQ(parsed.backend(), "cpu");
}

class FakeInfoService final : public v1::InfoService::Service {
  grpc::Status GetBuildInfo(grpc::ServerContext*, const v1::GetBuildInfoRequest*,
                            v1::BuildInfo* reply) override {
    reply->set_version("test");
    reply->set_backend("cpu");
    return grpc::Status::OK;
  }
};

TEST(BuildInfoProtoTest, ServiceAnswersInProcess) {
  FakeInfoService service;
  grpc::ServerBuilder builder;
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  ASSERT_NE(server, nullptr);
  auto channel = server->InProcessChannel(grpc::ChannelArguments());
  auto stub = v1::InfoService::NewStub(channel);
  grpc::ClientContext context;
  v1::BuildInfo reply;
  grpc::Status status = stub->GetBuildInfo(&context, v1::GetBuildInfoRequest(), &reply);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(reply.version(), "test");
  server->Shutdown();
}

}  // namespace
}  // namespace sigmatune
