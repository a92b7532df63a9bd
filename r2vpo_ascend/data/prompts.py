"""Turn a problem into the prompt string the policy sees."""

from __future__ import annotations

from typing import Any

# Only "{problem}" is substituted (not str.format), so literal braces such as \boxed{} need no escaping.
MATH_TEMPLATE = "{problem}\nPlease reason step by step, and put your final answer within \\boxed{}.\n"
ARITHMETIC_TEMPLATE = "{problem}"


def fill_template(template: str, problem: str) -> str:
    if "{problem}" not in template:
        raise ValueError(f"prompt template must contain '{{problem}}', got {template!r}")
    return template.replace("{problem}", problem)


def build_prompt(
    tokenizer: Any,
    problem: str,
    *,
    system_prompt: str | None = None,
    template: str | None = None,
) -> str:
    """The prompt text for ``problem``.

    ``template`` (default ``MATH_TEMPLATE``: the problem, then "Please reason step by step, and
    put your final answer within \\boxed{}.") must contain ``{problem}``; only that placeholder
    is substituted, so other braces are kept literally.

    - If ``tokenizer`` has a chat template: the filled template is the user message (after
      ``system_prompt`` as a system message, if given) and the result is
      ``tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)``.
    - Otherwise (or ``tokenizer`` is None): the filled template itself, preceded by
      ``system_prompt`` and a blank line if given.
    """
    text = fill_template(MATH_TEMPLATE if template is None else template, problem)
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        messages = []
        if system_prompt:
            messages.append({"role": "system", "content": system_prompt})
        messages.append({"role": "user", "content": text.strip()})
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        if not isinstance(prompt, str):
            raise TypeError(f"apply_chat_template(tokenize=False) returned {type(prompt).__name__}, expected str")
        return prompt
    return f"{system_prompt}\n\n{text}" if system_prompt else text
