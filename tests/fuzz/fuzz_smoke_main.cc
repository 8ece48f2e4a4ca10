// Smoke driver for libFuzzer-style targets under `bazel test` (gcc, no sanitizer runtime needed).
//
// A fuzz target defines `extern "C" int LLVMFuzzerTestOneInput(const uint8_t*, size_t)`. This main
// feeds it every seed file named on the command line (files or directories), then a fixed number
// of deterministic mutations of each seed (bit flips, byte sets, truncations, insertions,
// splices). A crash, abort, CHECK failure or sanitizer report fails the test. Real coverage-guided
// fuzzing uses the same target with libFuzzer: tools/fuzz.sh.
//
// Flags: --iterations=N mutations per seed (default 2000).
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

// A failed smoke check ends the test with a message (a missing seed must not pass silently).
#define SMOKE_CHECK(condition, ...)                  \
  do {                                               \
    if (!(condition)) {                              \
      std::fprintf(stderr, "fuzz smoke: " __VA_ARGS__); \
      std::fputc('\n', stderr);                      \
      std::exit(1);                                  \
    }                                                \
  } while (0)

namespace {

std::vector<uint8_t> ReadFile(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  SMOKE_CHECK(in.good(), "cannot read seed %s", path.c_str());
  return std::vector<uint8_t>((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

void Mutate(std::vector<uint8_t>& data, const std::vector<uint8_t>& other, std::mt19937_64& rng) {
  const auto pick = [&](size_t n) { return n == 0 ? 0 : static_cast<size_t>(rng() % n); };
  switch (rng() % 6) {
    case 0:  // flip a bit
      if (!data.empty()) data[pick(data.size())] ^= static_cast<uint8_t>(1u << (rng() % 8));
      break;
    case 1: {  // set a byte to an interesting value
      static const uint8_t kValues[] = {0x00, 0xFF, 0x7F, 0x80, 0x01, '{', '}', '"', ':', ','};
      if (!data.empty()) data[pick(data.size())] = kValues[rng() % sizeof(kValues)];
      break;
    }
    case 2:  // truncate
      data.resize(pick(data.size() + 1));
      break;
    case 3: {  // insert random bytes
      const size_t at = pick(data.size() + 1);
      const size_t n = 1 + rng() % 16;
      std::vector<uint8_t> bytes(n);
      for (uint8_t& b : bytes) b = static_cast<uint8_t>(rng());
      data.insert(data.begin() + at, bytes.begin(), bytes.end());
      break;
    }
    case 4: {  // overwrite 8 bytes with a large little-endian integer (sizes, offsets, counts)
      if (data.size() >= 8) {
        const size_t at = pick(data.size() - 7);
        const uint64_t v = (rng() % 2) ? ~0ull >> (rng() % 64) : rng();
        std::memcpy(&data[at], &v, 8);
      }
      break;
    }
    default: {  // splice with another seed
      if (!other.empty()) {
        const size_t from = pick(other.size());
        const size_t n = pick(other.size() - from + 1);
        const size_t at = pick(data.size() + 1);
        data.insert(data.begin() + at, other.begin() + from, other.begin() + from + n);
      }
      break;
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  long iterations = 2000;
  std::vector<std::vector<uint8_t>> seeds;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg.rfind("--iterations=", 0) == 0) {
      iterations = std::strtol(arg.c_str() + 13, nullptr, 10);
      continue;
    }
    const std::filesystem::path path(arg);
    if (std::filesystem::is_directory(path)) {
      for (const auto& entry : std::filesystem::directory_iterator(path)) {
        if (entry.is_regular_file()) seeds.push_back(ReadFile(entry.path()));
      }
    } else {
      seeds.push_back(ReadFile(path));
    }
  }
  SMOKE_CHECK(!seeds.empty(), "no seed files given (the fuzz_target's corpus is empty)");
  seeds.emplace_back();  // the empty input
  std::mt19937_64 rng(20261122);
  size_t runs = 0;
  for (size_t s = 0; s < seeds.size(); ++s) {
    LLVMFuzzerTestOneInput(seeds[s].data(), seeds[s].size());
    ++runs;
    for (long it = 0; it < iterations; ++it) {
      std::vector<uint8_t> data = seeds[s];
      const int rounds = 1 + static_cast<int>(rng() % 4);
      for (int r = 0; r < rounds; ++r) Mutate(data, seeds[rng() % seeds.size()], rng);
      LLVMFuzzerTestOneInput(data.data(), data.size());
      ++runs;
    }
  }
  // A plain closing line that the test summary can read.
  std::printf("fuzz smoke: %zu inputs from %zu seeds, no crash\n", runs, seeds.size());
  return 0;
}
