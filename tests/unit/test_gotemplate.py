"""The Go-template renderer that checks Ollama TEMPLATEs, and the choice of template for a tokenizer."""

from __future__ import annotations

import pytest

from finetune.gotemplate import TemplateError, ollama_values, render


def test_trim_markers_fields_and_variables() -> None:
    values = {"System": "S", "Messages": [{"Role": "user", "Content": "a"}, {"Role": "assistant", "Content": "b"}]}
    text = "x  \n {{- .System -}}  \n y{{ range $i, $m := .Messages }}[{{ $i }}:{{ $m.Role }}={{ .Content }}]{{ end }}"
    assert render(text, values) == "xSy[0:user=a][1:assistant=b]"


def test_if_else_chains_and_functions_follow_go() -> None:
    tpl = ('{{ range .Messages }}{{ if eq .Role "user" }}U{{ else if and (ne .Role "user") .Content }}A'
           '{{ else }}-{{ end }}{{ end }}')
    msgs = [{"Role": "user", "Content": "1"}, {"Role": "assistant", "Content": "2"},
            {"Role": "assistant", "Content": ""}]
    assert render(tpl, {"Messages": msgs}) == "UA-"
    last = '{{ range $i, $_ := .Messages }}{{ if eq (len (slice $.Messages $i)) 1 }}last{{ end }}{{ end }}'
    assert render(last, {"Messages": msgs}) == "last"
    assert render("{{ or .A .B }}|{{ and .A .B }}", {"A": "", "B": "b"}) == "b|"
    assert render("{{ if not .A }}n{{ end }}", {"A": []}) == "n"


def test_unbalanced_templates_are_errors() -> None:
    with pytest.raises(TemplateError):
        render("{{ if .A }}x", {"A": 1})
    with pytest.raises(TemplateError):
        render("{{ $nope }}", {})


def test_ollama_values_collect_system_and_merge_repeated_roles() -> None:
    values = ollama_values([{"role": "system", "content": "s1"}, {"role": "system", "content": "s2"},
                            {"role": "user", "content": "u"}])
    assert values["System"] == "s1\n\ns2"
    assert values["Messages"] == [{"Role": "system", "Content": "s1\n\ns2"}, {"Role": "user", "Content": "u"}]


def test_chatml_tokenizer_gets_the_chatml_template_and_stops(bundled_dir) -> None:
    from transformers import AutoTokenizer

    from finetune.ollama import choose_template, hf_prompt, modelfile_text

    tokenizer = AutoTokenizer.from_pretrained(bundled_dir)
    name, template, stops, default = choose_template(tokenizer)
    assert name == "chatml" and "<|im_end|>" in stops
    conversation = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": "hello"}, {"role": "user", "content": "bye"}]
    assert render(template, ollama_values(conversation)) == hf_prompt(tokenizer, conversation)
    text = modelfile_text(tokenizer, "m.gguf", None, None)
    assert 'PARAMETER stop "<|im_end|>"' in text and "TEMPLATE" in text
    # SmolLM2's template inserts a default system text when there is none: the Modelfile carries it.
    assert default and f'SYSTEM """{default}"""' in text


def test_unknown_chat_format_is_refused_with_the_known_names(bundled_dir) -> None:
    from transformers import AutoTokenizer

    from finetune.errors import ModelError
    from finetune.ollama import choose_template

    tokenizer = AutoTokenizer.from_pretrained(bundled_dir)
    tokenizer.chat_template = "{% for m in messages %}<<{{ m['role'] }}>>{{ m['content'] }}{% endfor %}"
    with pytest.raises(ModelError, match=r"no Ollama template .* \(known: chatml"):
        choose_template(tokenizer)
