"""The REST API's documentation page, written from its OpenAPI schema as one HTML file.

FastAPI's own ``/docs`` (Swagger UI) and ``/redoc`` load their scripts and styles from a
CDN; the app makes no outside request and must work offline, so it serves this page
instead: no script, no stylesheet, no image, nothing but the schema's own words.

Example:
    >>> from tumor_classifier.app.rest_docs import docs_html
    >>> page = docs_html(app.openapi())       # doctest: +SKIP
"""

from __future__ import annotations

import json
import re
from html import escape
from typing import Any

_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:60em;margin:2em auto;padding:0 1em;line-height:1.45}"
    "code,pre{font-family:ui-monospace,monospace;background:#f4f4f4;padding:0 .2em}"
    # display:block: a table wider than a phone scrolls inside itself, not the page.
    "table{border-collapse:collapse;margin:.5em 0;display:block;overflow-x:auto;max-width:100%}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}"
    "h2{border-top:1px solid #ccc;padding-top:.8em}"
    "h2,h3,td:last-child{overflow-wrap:anywhere}"
)


def _breakable(words: str) -> str:
    """Escaped words whose long names (``integrated_gradients``, ``VolumePredictionResponse``)
    may break after an underscore or before a capital inside a word, so a table fits a phone's width."""
    return re.sub(r"(?<=[a-z])(?=[A-Z])", "<wbr>", escape(words).replace("_", "_<wbr>"))


def _text(words: str) -> str:
    """Schema words as HTML: escaped, with their quotes (Markdown's single backticks, the
    docstrings' double ones) set as code."""
    return re.sub(r"``([^`]+)``|`([^`]+)`", lambda quoted: f"<code>{quoted[1] or quoted[2]}</code>", escape(words))


def _resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """Follows a ``{"$ref": "#/components/..."}`` to the object it names."""
    while isinstance(node, dict) and "$ref" in node:
        target: Any = schema
        for part in node["$ref"].lstrip("#/").split("/"):
            target = target[part]
        node = target
    return node


def _type_of(schema: dict[str, Any], node: dict[str, Any]) -> str:
    """A short type for people: ``string``, ``number (0 to 1)``, ``one of: auto, gradcam``."""
    node = _resolve(schema, node)
    if "enum" in node:
        return "one of: " + ", ".join(map(str, node["enum"]))
    if "anyOf" in node:
        return " or ".join(_type_of(schema, option) for option in node["anyOf"])
    kind = str(node.get("type", "object"))
    if node.get("format") in ("binary", "byte") or "contentMediaType" in node:  # OpenAPI 3.0 / 3.1 files
        kind = "file"
    bounds = [f"{word} {node[key]}" for key, word in (("minimum", "from"), ("maximum", "to")) if key in node]
    return kind + (f" ({' '.join(bounds)})" if bounds else "")


def _rows(schema: dict[str, Any], fields: list[tuple[str, dict[str, Any], bool, str]]) -> str:
    """An HTML table of (name, schema node, required, description) rows."""
    if not fields:
        return "<p>None.</p>"
    rows = []
    for name, node, required, description in fields:
        default = _resolve(schema, node).get("default")
        # As a client writes it (JSON, a query): false, not Python's False.
        shown = json.dumps(default) if isinstance(default, bool) else str(default)
        extra = f" Default: <code>{escape(shown)}</code>." if default is not None else ""
        rows.append(
            f"<tr><td><code>{_breakable(name)}</code>{' (required)' if required else ''}</td>"
            f"<td>{_breakable(_type_of(schema, node))}</td><td>{_text(description)}{extra}</td></tr>"
        )
    return "<table><tr><th>Name</th><th>Type</th><th>Description</th></tr>" + "".join(rows) + "</table>"


def _operation(schema: dict[str, Any], path: str, verb: str, op: dict[str, Any]) -> str:
    parts = [f"<h2><code>{escape(verb.upper())} {escape(path)}</code>: {escape(op.get('summary', ''))}</h2>"]
    if op.get("description"):
        parts.append(f"<p>{_text(op['description'])}</p>")
    query = [(p["name"], p.get("schema", {}), bool(p.get("required")), p.get("description", "")) for p in op.get("parameters", [])]
    parts.append("<h3>Query parameters</h3>" + _rows(schema, query))
    for media_type, content in op.get("requestBody", {}).get("content", {}).items():
        body = _resolve(schema, content.get("schema", {}))
        required = set(body.get("required", []))
        fields = [(name, node, name in required, _resolve(schema, node).get("description", "")) for name, node in body.get("properties", {}).items()]
        parts.append(f"<h3>Request body (<code>{escape(media_type)}</code>)</h3>" + _rows(schema, fields))
    answers = []
    for status, answer in op.get("responses", {}).items():
        body = next(iter(answer.get("content", {}).values()), {}).get("schema", {})
        name = _resolve(schema, body).get("title", "")
        answers.append(f"<tr><td>{escape(status)}</td><td>{_text(answer.get('description', ''))}</td><td>{_breakable(name)}</td></tr>")
    parts.append("<h3>Answers</h3><table><tr><th>Status</th><th>When</th><th>JSON body</th></tr>" + "".join(answers) + "</table>")
    return "\n".join(parts)


def _model(schema: dict[str, Any], name: str, model: dict[str, Any]) -> str:
    required = set(model.get("required", []))
    fields = [(field, node, field in required, _resolve(schema, node).get("description", "")) for field, node in model.get("properties", {}).items()]
    return f"<h3 id='{escape(name)}'>{escape(name)}</h3><p>{_text(model.get('description', ''))}</p>" + _rows(schema, fields)


def docs_html(schema: dict[str, Any], *, schema_url: str = "/openapi.json") -> str:
    """The documentation page of an OpenAPI 3 schema, self-contained (no script, no outside asset).

    Args:
        schema: The OpenAPI document (``FastAPI.openapi()``).
        schema_url: Where the machine-readable schema is served, linked from the page.

    Returns:
        A complete HTML document: each route with its query parameters, request body and
        answers, then the JSON bodies (the schema's components).
    """
    info = schema.get("info", {})
    operations = [_operation(schema, path, verb, op) for path, verbs in schema.get("paths", {}).items() for verb, op in verbs.items()]
    models = [_model(schema, name, model) for name, model in schema.get("components", {}).get("schemas", {}).items() if "properties" in model]
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{escape(info.get('title', 'API'))} REST API</title><style>{_STYLE}</style></head><body>"
        f"<h1>{escape(info.get('title', 'API'))} {escape(str(info.get('version', '')))}: REST API</h1>"
        f"<p>{_text(info.get('description', ''))}</p>"
        f"<p>Machine-readable schema: <a href='{escape(schema_url)}'>{escape(schema_url)}</a> (OpenAPI {escape(str(schema.get('openapi', '')))}).</p>"
        + "\n".join(operations)
        + "<h2>JSON bodies</h2>"
        + "\n".join(models)
        + "</body></html>"
    )
