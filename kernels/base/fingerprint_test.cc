#include "kernels/base/fingerprint.h"

#include <set>
#include <string>

#include "gtest/gtest.h"

namespace sigmatune {
namespace {

TEST(FingerprintTest, StableAndIndependentOfChunking) {
  std::string data;
  for (int i = 0; i < 1000; ++i) data.push_back(static_cast<char>(i * 37 + 11));
  const std::string whole = Fingerprint().Update(data).Hex();
  EXPECT_EQ(whole.size(), 32u);
  for (size_t cut : {1u, 3u, 7u, 8u, 9u, 500u, 999u}) {
    Fingerprint f;
    f.Update(data.substr(0, cut)).Update(data.substr(cut));
    EXPECT_EQ(f.Hex(), whole) << "cut at " << cut;
  }
  EXPECT_EQ(Fingerprint().Update(data).Hex(), whole);
}

TEST(FingerprintTest, DistinguishesContentLengthAndFields) {
  std::set<std::string> digests;
  digests.insert(Fingerprint().Hex());
  digests.insert(Fingerprint().Update(std::string(1, '\0')).Hex());
  digests.insert(Fingerprint().Update(std::string(8, '\0')).Hex());
  digests.insert(Fingerprint().Update(std::string(9, '\0')).Hex());
  digests.insert(Fingerprint().Update("abc").Hex());
  digests.insert(Fingerprint().Update("abd").Hex());
  digests.insert(Fingerprint().UpdateField("ab").UpdateField("c").Hex());
  digests.insert(Fingerprint().UpdateField("a").UpdateField("bc").Hex());
  EXPECT_EQ(digests.size(), 8u);
  // One flipped bit anywhere in a long input changes the digest.
  std::string data(4096, 'x');
  const std::string base = Fingerprint().Update(data).Hex();
  for (size_t i : {0u, 7u, 8u, 2048u, 4095u}) {
    std::string flipped = data;
    flipped[i] ^= 1;
    EXPECT_NE(Fingerprint().Update(flipped).Hex(), base) << i;
  }
}

}  // namespace
}  // namespace sigmatune
