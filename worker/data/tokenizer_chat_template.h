// Chat templates: a hard-coded renderer for the ChatML family of Jinja templates (SmolLM2-Instruct).
//
//   ST_ASSIGN_OR_RETURN(ChatTemplate t, ChatTemplate::FromJinja(jinja_text, "chat_template.jinja"));
//   std::string prompt = t.Render(messages, GenerationPrompt::kAdd);
//
// Contract: FromJinja recognises a template by its exact text (ignoring leading/trailing
// whitespace) and rejects any other template with an error naming the source, never guessing.
// Render produces exactly what transformers' apply_chat_template(tokenize=False) renders with
// that template: for SmolLM2, a default system turn ("You are a helpful AI assistant named
// SmolLM, trained by Hugging Face") when the first message is not a system message, then
// "<|im_start|>{role}\n{content}<|im_end|>\n" per message, then "<|im_start|>assistant\n" when a
// generation prompt is asked for. Contents are inserted verbatim (special-token text inside a
// content is tokenized as the special token, as in transformers). Pure, thread-safe.
#ifndef SIGMATUNE_WORKER_DATA_TOKENIZER_CHAT_TEMPLATE_H_
#define SIGMATUNE_WORKER_DATA_TOKENIZER_CHAT_TEMPLATE_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace sigmatune::data {

struct ChatMessage {
  std::string role;  // "system", "user", "assistant" (any text is rendered as is)
  std::string content;
};

// Whether Render appends the header of the assistant turn to be generated.
enum class GenerationPrompt { kNo, kYes };

// The template families the renderer implements.
enum class ChatTemplateKind {
  kSmolLM2,  // ChatML with SmolLM2's default system prompt
  kChatML,   // plain ChatML, no default system prompt
};

class ChatTemplate {
 public:
  // Recognises the Jinja text of a supported template (source_name appears in errors).
  static absl::StatusOr<ChatTemplate> FromJinja(absl::string_view jinja,
                                                absl::string_view source_name);
  explicit ChatTemplate(ChatTemplateKind kind) : kind_(kind) {}

  ChatTemplateKind kind() const { return kind_; }

  // Renders messages. An empty list renders only the generation prompt (transformers refuses an
  // empty conversation; callers that mirror it should check first).
  std::string Render(absl::Span<const ChatMessage> messages, GenerationPrompt prompt) const;

 private:
  ChatTemplateKind kind_;
};

}  // namespace sigmatune::data

#endif  // SIGMATUNE_WORKER_DATA_TOKENIZER_CHAT_TEMPLATE_H_
