"""A small Go text/template renderer: the subset Ollama chat templates use, to check a Modelfile's TEMPLATE.

Supported: text; `{{ pipeline }}` with `{{-`/`-}}` trim markers; fields (`.Role`, `$.System`), variables
(`$i`, `$m`), string and integer literals, parenthesised calls of eq, ne, lt, le, gt, ge, and, or, not, len,
slice; `if`/`else if`/`else`/`end`; `range PIPELINE` and `range $i, $v := PIPELINE`. Semantics follow Go:
`and`/`or` return an operand, truthiness is "non-empty / non-zero", `{{-` trims all whitespace before it.
"""

from __future__ import annotations

import re
from typing import Any

_ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.S)
_TOKEN = re.compile(r'\s*(\(|\)|"(?:[^"\\]|\\.)*"|[^\s()]+)')


class TemplateError(ValueError):
    """A template this renderer cannot parse or run."""


def _lex(source: str) -> list[tuple[str, str]]:
    """Split into ("text", s) and ("action", s) pieces, applying the trim markers to the text."""
    pieces: list[tuple[str, str]] = []
    pos, trim_next = 0, False
    for match in _ACTION.finditer(source):
        text = source[pos : match.start()]
        if trim_next:
            text = text.lstrip(" \t\r\n")
        if match.group(1):
            text = text.rstrip(" \t\r\n")
        if text:
            pieces.append(("text", text))
        pieces.append(("action", match.group(2).strip()))
        trim_next, pos = bool(match.group(3)), match.end()
    text = source[pos:]
    if trim_next:
        text = text.lstrip(" \t\r\n")
    if text:
        pieces.append(("text", text))
    return pieces


def _parse(pieces: list[tuple[str, str]], pos: int = 0, stop: tuple[str, ...] = ()) -> tuple[list, int, str]:
    """Nodes up to one of the `stop` keywords; returns (nodes, next position, the keyword met)."""
    nodes: list[Any] = []
    while pos < len(pieces):
        kind, value = pieces[pos]
        word = value.split(" ", 1)[0] if kind == "action" else ""
        if kind == "action" and word in stop:
            return nodes, pos, value
        pos += 1
        if kind == "text" or word.startswith("/*"):
            if kind == "text":
                nodes.append(("text", value))
        elif word == "if" or word == "range":
            nodes.append(_block(word, value[len(word) :].strip(), pieces, pos))
            pos = nodes[-1][-1]
        else:
            nodes.append(("print", value))
    if stop:
        raise TemplateError(f"missing {{{{ end }}}} (expected one of {', '.join(stop)})")
    return nodes, pos, ""


def _block(word: str, head: str, pieces: list[tuple[str, str]], pos: int) -> tuple:
    """An if/range block: ("if", [(cond, body), ...], else_body, next) or ("range", vars, expr, body, else, next)."""
    if word == "range":
        names: list[str] = []
        if ":=" in head:
            left, head = head.split(":=", 1)
            names = [n.strip() for n in left.split(",")]
        body, pos, met = _parse(pieces, pos, ("end", "else"))
        other: list = []
        if met == "else":
            other, pos, met = _parse(pieces, pos + 1, ("end",))
        return ("range", names, head.strip(), body, other, pos + 1)
    branches, other = [], []
    cond = head
    while True:
        body, pos, met = _parse(pieces, pos, ("end", "else"))
        branches.append((cond, body))
        if met == "end":
            return ("if", branches, other, pos + 1)
        rest = met[len("else") :].strip()
        if rest.startswith("if "):
            cond, pos = rest[3:].strip(), pos + 1
            continue
        other, pos, _ = _parse(pieces, pos + 1, ("end",))
        return ("if", branches, other, pos + 1)


def _truth(value: Any) -> bool:
    """Go's truthiness: false, 0, nil, and empty strings, lists and maps are false."""
    return bool(value)


def _field(obj: Any, path: list[str]) -> Any:
    """Follow .A.B on dicts (Ollama's messages are maps with Role and Content)."""
    for name in path:
        if isinstance(obj, dict):
            obj = obj.get(name, "")
        else:
            raise TemplateError(f"cannot read .{name} of {type(obj).__name__}")
    return obj


_FUNCS = {
    "eq": lambda a, *b: any(a == x for x in b),
    "ne": lambda a, b: a != b,
    "lt": lambda a, b: a < b,
    "le": lambda a, b: a <= b,
    "gt": lambda a, b: a > b,
    "ge": lambda a, b: a >= b,
    "not": lambda a: not _truth(a),
    "len": len,
    "slice": lambda a, i=0, j=None: a[i:j],
}


def _tokens(expr: str) -> list[str]:
    """Words, string literals and parentheses of a pipeline."""
    out, pos = [], 0
    while pos < len(expr.rstrip()):
        match = _TOKEN.match(expr, pos)
        if not match:
            raise TemplateError(f"cannot read {expr!r}")
        out.append(match.group(1))
        pos = match.end()
    return out


def _value(token: str, dot: Any, scope: dict[str, Any]) -> Any:
    """One operand: a literal, .Field, $var or $.Field."""
    if token.startswith('"'):
        return token[1:-1].encode().decode("unicode_escape")
    if re.fullmatch(r"-?\d+", token):
        return int(token)
    if token == ".":
        return dot
    if token.startswith("$"):
        name, _, rest = token.partition(".")
        if name not in scope:
            raise TemplateError(f"undefined variable {name}")
        return _field(scope[name], rest.split(".")) if rest else scope[name]
    if token.startswith("."):
        return _field(dot, token[1:].split("."))
    raise TemplateError(f"unknown operand {token!r}")


def _call(words: list[Any], dot: Any, scope: dict[str, Any]) -> Any:
    """Evaluate a command: a function with arguments, or a single operand."""
    head = words[0]
    if isinstance(head, str) and head in ("and", "or"):
        result: Any = None
        for word in words[1:]:
            result = _operand(word, dot, scope)
            if _truth(result) != (head == "and"):
                return result
        return result
    if isinstance(head, str) and head in _FUNCS:
        return _FUNCS[head](*(_operand(w, dot, scope) for w in words[1:]))
    if len(words) != 1:
        raise TemplateError(f"unknown function {head!r}")
    return _operand(head, dot, scope)


def _operand(word: Any, dot: Any, scope: dict[str, Any]) -> Any:
    """A parenthesised command (a list) or a plain operand."""
    return _call(word, dot, scope) if isinstance(word, list) else _value(word, dot, scope)


def _group(tokens: list[str]) -> list[Any]:
    """Nest parenthesised sub-commands as lists."""
    stack: list[list[Any]] = [[]]
    for token in tokens:
        if token == "(":
            stack.append([])
        elif token == ")":
            inner = stack.pop()
            stack[-1].append(inner)
        else:
            stack[-1].append(token)
    if len(stack) != 1:
        raise TemplateError("unbalanced parentheses")
    return stack[0]


def _eval(expr: str, dot: Any, scope: dict[str, Any]) -> Any:
    """Evaluate one pipeline (no `|` chains: Ollama's chat templates do not need them)."""
    return _call(_group(_tokens(expr)), dot, scope)


def _run(nodes: list, dot: Any, scope: dict[str, Any], out: list[str]) -> None:
    """Render nodes into `out`."""
    for node in nodes:
        if node[0] == "text":
            out.append(node[1])
        elif node[0] == "print":
            value = _eval(node[1], dot, scope)
            out.append("" if value is None else str(value))
        elif node[0] == "if":
            for cond, body in node[1]:
                if _truth(_eval(cond, dot, scope)):
                    _run(body, dot, scope, out)
                    break
            else:
                _run(node[2], dot, scope, out)
        else:
            _, names, expr, body, other, _ = node
            items = _eval(expr, dot, scope)
            if not items:
                _run(other, dot, scope, out)
            for index, item in enumerate(items or []):
                inner = dict(scope)
                if len(names) == 2:
                    inner[names[0]], inner[names[1]] = index, item
                elif len(names) == 1:
                    inner[names[0]] = item
                _run(body, item, inner, out)


def render(template: str, values: dict[str, Any]) -> str:
    """Render a Go template with `values` as the dot (and as `$`)."""
    nodes, _, _ = _parse(_lex(template))
    out: list[str] = []
    _run(nodes, values, {"$": values}, out)
    return "".join(out)


def ollama_values(messages: list[dict[str, str]]) -> dict[str, Any]:
    """What Ollama passes to a chat template: System (all system texts, joined) and Messages (collated)."""
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    collated: list[dict[str, str]] = []
    for message in messages:
        if collated and collated[-1]["Role"] == message["role"]:
            collated[-1]["Content"] += "\n\n" + message["content"]  # Ollama merges consecutive same-role turns
        else:
            collated.append({"Role": message["role"], "Content": message["content"]})
    return {"System": system, "Messages": collated, "Response": ""}
