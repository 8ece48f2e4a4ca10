#include "worker/data/tokenizer_chat_template.h"

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/strings/ascii.h"

namespace sigmatune::data {
namespace {

// SmolLM2-Instruct's chat_template (tokenizer_config.json on the Hub and tokenizer.chat_template
// in its GGUF).
constexpr char kSmolLM2Template[] =
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}";

// The plain ChatML template (e.g. SmolLM2 base models, many others).
constexpr char kChatMLTemplate[] =
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}";

constexpr char kSmolLM2DefaultSystem[] =
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n";

}  // namespace

absl::StatusOr<ChatTemplate> ChatTemplate::FromJinja(absl::string_view jinja,
                                                     absl::string_view source_name) {
  const absl::string_view text = absl::StripAsciiWhitespace(jinja);
  if (text == kSmolLM2Template) return ChatTemplate(ChatTemplateKind::kSmolLM2);
  if (text == kChatMLTemplate) return ChatTemplate(ChatTemplateKind::kChatML);
  return absl::UnimplementedError(absl::StrCat(
      source_name, ": chat_template is not one this renderer implements (SmolLM2-Instruct "
      "ChatML or plain ChatML); add a renderer for it in worker/data/tokenizer_chat_template.cc"));
}

std::string ChatTemplate::Render(absl::Span<const ChatMessage> messages,
                                 GenerationPrompt prompt) const {
  std::string out;
  for (size_t i = 0; i < messages.size(); ++i) {
    if (i == 0 && kind_ == ChatTemplateKind::kSmolLM2 && messages[0].role != "system") {
      out.append(kSmolLM2DefaultSystem);
    }
    absl::StrAppend(&out, "<|im_start|>", messages[i].role, "\n", messages[i].content,
                    "<|im_end|>\n");
  }
  if (prompt == GenerationPrompt::kYes) out.append("<|im_start|>assistant\n");
  return out;
}

}  // namespace sigmatune::data
