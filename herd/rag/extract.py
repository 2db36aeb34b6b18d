"""Text extraction for retrieval: an uploaded file (its name and bytes) becomes a `Document` of text `Section`s,
each with the metadata that says where in the file it came from, ready to be chunked and embedded.

Formats: plain text and text-like files (.txt, .csv, .rst, source code, ...), Markdown (split at headings),
HTML (the main text, found by trafilatura), PDF (pypdf, page by page), DOCX (python-docx) and JSON / JSONL (one
section per record). The type comes from the file name's extension, else from a given MIME type, else from the
bytes themselves (`detect_type`). Nothing is read beyond the given bytes: no network, no other files.

Bad input raises an `ExtractionError` subclass whose message names the file and the problem: an unsupported type,
a file with no text (empty, or a scanned PDF: herd does no OCR), or one its parser could not read.
"""
from __future__ import annotations

import codecs
import contextvars
import io
import json
import logging
import re
import threading
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from herd.errors import HerdError

DOCX_MIME = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
SUPPORTED_TYPES: dict[str, str] = {
    ".txt": "text/plain", ".text": "text/plain", ".log": "text/plain", ".ini": "text/plain", ".cfg": "text/plain",
    ".conf": "text/plain",
    ".md": "text/markdown", ".markdown": "text/markdown",
    ".html": "text/html", ".htm": "text/html",
    ".pdf": "application/pdf",
    ".docx": DOCX_MIME,
    ".json": "application/json", ".jsonl": "application/jsonl", ".ndjson": "application/x-ndjson",
    ".csv": "text/csv", ".tsv": "text/tab-separated-values", ".rst": "text/x-rst", ".tex": "text/x-tex",
    ".yaml": "application/yaml", ".yml": "application/yaml", ".toml": "application/toml",
    ".py": "text/x-python", ".sh": "text/x-shellscript", ".js": "text/javascript", ".ts": "text/x-typescript",
    ".java": "text/x-java", ".c": "text/x-c", ".h": "text/x-c", ".cpp": "text/x-c++", ".hpp": "text/x-c++",
    ".go": "text/x-go", ".rs": "text/x-rust", ".rb": "text/x-ruby", ".sql": "application/sql", ".css": "text/css",
}
# other names callers send for the types above
_MIME_ALIASES = {"text/x-markdown": "text/markdown", "application/xhtml+xml": "text/html",
                 "application/x-jsonlines": "application/jsonl", "application/jsonlines": "application/jsonl",
                 "text/x-yaml": "application/yaml", "application/x-yaml": "application/yaml"}
TEXT_FIELDS = ("text", "content", "body", "page_content")  # a JSON record's text: the first of these that is a string
MAX_WARNINGS = 20  # parser warnings kept in Document.metadata["warnings"]


@dataclass
class Section:
    """A piece of a document's text, with where it came from: {"page": 3} (PDF, 1-based), {"section": "Install >
    Linux"} (the heading path in Markdown, DOCX, HTML), {"record": 12} (JSON / JSONL, 0-based, plus the record's
    scalar fields)."""

    text: str
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class Document:
    """The text of one file. `metadata`: {"pages": N} for a PDF, {"title": ...} when the file has one,
    {"warnings": [...]} when the parser recovered from problems in the file."""

    filename: str
    mime_type: str
    sections: list[Section]
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def text(self) -> str:
        return "\n\n".join(s.text for s in self.sections)


class ExtractionError(HerdError):
    """A file that cannot be turned into text; the message names the file and the problem."""

    def __init__(self, message: str, param: str | None = "file") -> None:
        super().__init__(message, param)


class UnsupportedFileType(ExtractionError):
    """Neither the name, nor the given MIME type, nor the bytes say a type herd can read."""


class EmptyDocument(ExtractionError):
    """The file has no text at all: empty, whitespace only, or a PDF of images."""


class CorruptDocument(ExtractionError):
    """The file's parser (PDF, DOCX, JSON, the text decoder) could not read it."""


# ---- type detection ---------------------------------------------------------------------------------------------


def _label(filename: str) -> str:
    return filename or "(unnamed file)"


def _extension(filename: str) -> str:
    base = re.split(r"[\\/]", filename)[-1]
    dot = base.rfind(".")
    return base[dot:].lower() if dot > 0 else ""


def _decode(data: bytes) -> str:
    """The text of `data`: UTF-8, or what its byte order mark says; newlines normalised. UnicodeDecodeError if not."""
    for bom, codec in ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
                       (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16")):
        if data.startswith(bom):
            text = data.decode(codec)
            break
    else:
        text = data.decode("utf-8")
    return text.replace("\r\n", "\n").replace("\r", "\n")


_CONTROL = re.compile(r"[\x00-\x07\x0e-\x1a\x1c-\x1f]")  # not in text files (unlike tab, form feed or ESC)


def _looks_like_text(data: bytes) -> bool:
    try:
        sample = _decode(data)[:65536]
    except UnicodeDecodeError:
        return False
    return "\x00" not in sample and len(_CONTROL.findall(sample)) <= len(sample) // 100


def _sniff(data: bytes) -> str | None:
    if data.startswith(b"%PDF-"):
        return "application/pdf"
    if data.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as z:
                return DOCX_MIME if "word/document.xml" in z.namelist() else None
        except (zipfile.BadZipFile, OSError, ValueError):
            return None
    head = data[:2048].lstrip(codecs.BOM_UTF8 + b" \t\r\n").lower()
    if head.startswith(b"<") and (b"<html" in head or b"<!doctype html" in head):
        return "text/html"
    return "text/plain" if _looks_like_text(data) else None


def detect_type(filename: str, data: bytes, mime_type: str | None = None) -> str:
    """The MIME type: from the extension; else from a given mime_type; else sniff (%PDF-, PK zip with
    word/document.xml, '<html', valid UTF-8 text -> text/plain). Unsupported -> UnsupportedFileType."""
    if (by_name := SUPPORTED_TYPES.get(_extension(filename))) is not None:
        return by_name
    given = (mime_type or "").split(";")[0].strip().lower()
    given = _MIME_ALIASES.get(given, given)
    if given in SUPPORTED_TYPES.values():
        return given
    if (sniffed := _sniff(data)) is not None:
        return sniffed
    said = f" ({mime_type})" if mime_type else ""
    raise UnsupportedFileType(f"{_label(filename)}: unsupported file type{said}; herd reads "
                              + ", ".join(sorted(SUPPORTED_TYPES)))


# ---- sections under headings (Markdown, DOCX, HTML) -------------------------------------------------------------


class _Outline:
    """Sections from a stream of headings and text blocks. A heading starts a section whose metadata is its heading
    path ("Install > Linux") and whose text begins with the heading itself; a heading followed directly by a deeper
    one stays with that subsection rather than becoming a section of its own."""

    def __init__(self, separator: str) -> None:
        self.separator = separator
        self.sections: list[Section] = []
        self._path: list[tuple[int, str]] = []
        self._blocks: list[str] = []
        self._has_body = False

    def heading(self, level: int, title: str, line: str) -> None:
        if self._has_body or (self._blocks and self._path and level <= self._path[-1][0]):
            self._flush()
        while self._path and self._path[-1][0] >= level:
            self._path.pop()
        self._path.append((level, title))
        self._blocks.append(line)

    def text(self, block: str) -> None:
        if block.strip():
            self._has_body = True
        elif self.separator != "\n":  # blank lines are kept only in line-by-line (Markdown) text
            return
        self._blocks.append(block)

    def _flush(self) -> None:
        text = self.separator.join(self._blocks).strip()
        if text:
            path = " > ".join(title for _, title in self._path if title)
            self.sections.append(Section(text, {"section": path} if path else {}))
        self._blocks, self._has_body = [], False

    def finish(self) -> list[Section]:
        self._flush()
        return self.sections


# ---- plain text and Markdown ------------------------------------------------------------------------------------


def _text_of(name: str, data: bytes) -> str:
    try:
        return _decode(data)
    except UnicodeDecodeError as e:
        encoding = "UTF-8" if e.encoding.startswith("utf-8") else e.encoding.upper()
        raise CorruptDocument(f"{name}: not {encoding} text (undecodable bytes at offset {e.start}, {e.reason}); "
                              "save it as UTF-8 and upload it again") from None


def _read_text(name: str, data: bytes) -> tuple[list[Section], dict[str, Any]]:
    return [Section(_text_of(name, data).strip())], {}


_ATX = re.compile(r" {0,3}(#{1,6})(?=[ \t]|$)(.*)$")
_FENCE = re.compile(r" {0,3}(`{3,}|~{3,})")
_SETEXT = re.compile(r" {0,3}(=+|-+)[ \t]*$")
_NOT_A_TITLE = re.compile(r" {0,3}(?:[-*+>]|\d+[.)])(?:[ \t]|$)| {4}|\t")  # list items, quotes, indented code


def _read_markdown(name: str, data: bytes) -> tuple[list[Section], dict[str, Any]]:
    lines = _text_of(name, data).split("\n")
    outline, title, seen_heading = _Outline("\n"), None, False
    fence = ""  # the open code fence, e.g. "```"
    i = 0
    while i < len(lines):
        line = lines[i]
        if m := _FENCE.match(line):
            mark = m.group(1)
            if not fence:
                fence = mark
            elif mark[0] == fence[0] and len(mark) >= len(fence) and not line[m.end():].strip():
                fence = ""
            outline.text(line)
        elif fence:
            outline.text(line)
        elif m := _ATX.match(line):
            level, heading = len(m.group(1)), re.sub(r"(?:^|[ \t]+)#+$", "", m.group(2).strip()).strip()
            title = heading if not seen_heading and level == 1 else title
            seen_heading = True
            outline.heading(level, heading, line)
        elif (i + 1 < len(lines) and line.strip() and (m := _SETEXT.match(lines[i + 1]))
              and (i == 0 or not lines[i - 1].strip()) and not _NOT_A_TITLE.match(line)):
            level = 1 if m.group(1)[0] == "=" else 2
            title = line.strip() if not seen_heading and level == 1 else title
            seen_heading = True
            outline.heading(level, line.strip(), line + "\n" + lines[i + 1])
            i += 1
        else:
            outline.text(line)
        i += 1
    return outline.finish(), {"title": title} if title else {}


# ---- HTML -------------------------------------------------------------------------------------------------------

_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9._:-]+)""", re.IGNORECASE)
_XML_DECLARATION = re.compile(r"^\s*<\?xml[^>]*\?>")
# trafilatura's XML output: blocks that are text of their own, and containers of blocks
_XML_BLOCKS = {"p", "list", "table", "quote", "code", "head", "item", "row", "div", "section"}
_HTML_BLOCKS = ("p", "div", "section", "article", "main", "aside", "header", "footer", "nav", "li", "ul", "ol", "dl",
                "dt", "dd", "tr", "table", "blockquote", "pre", "h1", "h2", "h3", "h4", "h5", "h6", "br", "hr",
                "form", "fieldset", "figure", "figcaption", "address", "details", "summary")


def _html_str(data: bytes) -> str:
    """The page as a string: by its byte order mark, else its <meta charset>, else UTF-8, else Windows-1252."""
    try:
        if data.startswith((codecs.BOM_UTF8, codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            return _decode(data)
    except UnicodeDecodeError:
        pass
    if m := _META_CHARSET.search(data[:4096]):
        charset = m.group(1).decode("ascii").lower()
        try:  # a page that says utf-16 in ASCII bytes is not UTF-16 (browsers read it as UTF-8 too)
            return data.decode("utf-8" if charset.startswith(("utf-16", "utf-32")) else charset, errors="replace")
        except LookupError:
            pass
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace")


def _clean_lines(text: str, keep_indent: bool = False) -> str:
    lines = (line.rstrip() if keep_indent else " ".join(line.split()) for line in text.split("\n"))
    return "\n".join(line for line in lines if line.strip())


def _xml_text(el: Any) -> str:
    """The text of one element of trafilatura's XML output: line breaks kept, table rows as "a | b" lines."""
    if el.tag == "row":
        return " | ".join(" ".join(_xml_text(cell).split()) for cell in el)
    parts = [el.text or ""]
    for child in el:
        if child.tag == "lb":
            parts.append("\n")
        elif child.tag in _XML_BLOCKS:
            parts.append("\n" + _xml_text(child) + "\n")
        else:
            parts.append(_xml_text(child))
        parts.append(child.tail or "")
    return "".join(parts)


def _walk_xml(el: Any, outline: _Outline) -> None:
    if (el.text or "").strip():
        outline.text(_clean_lines(el.text))
    for child in el:
        if child.tag == "head":
            level = int(m.group(1)) if (m := re.fullmatch(r"h([1-6])", child.get("rend") or "")) else 2
            heading = " ".join(_xml_text(child).split())
            if heading:
                outline.heading(level, heading, heading)
        elif child.tag in ("div", "section", "main"):
            _walk_xml(child, outline)
        elif child.tag != "graphic":
            outline.text(_clean_lines(_xml_text(child), keep_indent=child.tag == "code"))
        if (child.tail or "").strip():
            outline.text(_clean_lines(child.tail))


def _body_text(page: str) -> tuple[str, str | None]:
    """The visible text of a page's <body> (no scripts or styles), one block a line; and its <title>."""
    from lxml import etree
    from lxml import html as lxml_html

    try:
        tree = lxml_html.document_fromstring(page)
    except (etree.ParserError, ValueError):  # "Document is empty"
        return "", None
    title = " ".join((tree.findtext(".//title") or "").split()) or None
    for el in tree.xpath("//script | //style | //noscript | //template | //head"):
        el.drop_tree()
    for el in tree.iter(*_HTML_BLOCKS):
        el.text, el.tail = "\n" + (el.text or ""), "\n" + (el.tail or "")
    body = tree.find("body")
    return _clean_lines((body if body is not None else tree).text_content()), title


def _read_html(name: str, data: bytes) -> tuple[list[Section], dict[str, Any]]:
    import trafilatura
    from lxml import etree

    page = _XML_DECLARATION.sub("", _html_str(data).replace("\x00", ""), count=1)
    outline, title, root = _Outline("\n\n"), None, None
    try:
        xml = trafilatura.extract(page, include_comments=False, include_tables=True, output_format="xml",
                                  with_metadata=True)
        root = etree.fromstring(xml) if xml else None
    except Exception:  # noqa: BLE001 - trafilatura failing on odd markup: the body text below still reads the page
        root = None
    if root is not None:
        title = root.get("title")
        main = root.find("main")
        if main is not None:
            _walk_xml(main, outline)
    sections = [s for s in outline.finish() if s.text.strip()]
    if not sections or not title:
        text, page_title = _body_text(page)
        sections = sections or [Section(text)]
        title = title or page_title
    return sections, {"title": title} if title else {}


# ---- PDF --------------------------------------------------------------------------------------------------------

_pdf_warnings: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("herd_pdf_warnings", default=None)
_pdf_log_lock = threading.Lock()


class _PypdfLog(logging.Handler):
    """On the "pypdf" logger, which then no longer propagates: what pypdf logs while extract() reads a PDF goes into
    that Document's metadata["warnings"] rather than to stderr; anything else goes on to the root logger as before."""

    def emit(self, record: logging.LogRecord) -> None:
        sink = _pdf_warnings.get()
        if sink is None:
            logging.getLogger().handle(record)
        elif len(sink) < MAX_WARNINGS and (message := record.getMessage()) not in sink:
            sink.append(message)


def _capture_pypdf_log() -> None:
    logger = logging.getLogger("pypdf")
    with _pdf_log_lock:
        if not any(isinstance(h, _PypdfLog) for h in logger.handlers):
            logger.addHandler(_PypdfLog())
            logger.propagate = False


def _read_pdf(name: str, data: bytes) -> tuple[list[Section], dict[str, Any]]:
    import pypdf

    _capture_pypdf_log()
    warnings: list[str] = []
    token = _pdf_warnings.set(warnings)
    try:
        try:
            reader = pypdf.PdfReader(io.BytesIO(data))
            if reader.is_encrypted and not reader.decrypt(""):
                raise CorruptDocument(f"{name}: the PDF is encrypted; herd cannot read it without its password")
            meta: dict[str, Any] = {"pages": len(reader.pages)}
        except CorruptDocument:
            raise
        except Exception as e:  # noqa: BLE001 - pypdf raises many types (KeyError, ValueError, ...) on broken files
            raise CorruptDocument(f"{name}: not a readable PDF ({_reason(e, warnings)})") from None
        try:
            title = str(reader.metadata.title or "").strip() if reader.metadata else ""
        except Exception:  # noqa: BLE001 - a broken /Info dictionary costs only the title
            title = ""
        sections = []
        for number, page in enumerate(reader.pages, 1):
            try:
                text = page.extract_text()
            except Exception as e:  # noqa: BLE001 - as above, for a broken page
                why = _reason(e, warnings)
                raise CorruptDocument(f"{name}: cannot read the text of page {number} ({why})") from None
            text = (text or "").replace("\r\n", "\n").replace("\r", "\n").strip()
            if text:
                sections.append(Section(text, {"page": number}))
    finally:
        _pdf_warnings.reset(token)
    if not sections:
        raise EmptyDocument(f"{name}: no extractable text; scanned PDFs need OCR, which herd does not do")
    if title:
        meta["title"] = title
    if warnings:
        meta["warnings"] = warnings
    return sections, meta


def _reason(e: Exception, warnings: Sequence[str] = ()) -> str:
    """What a parser said failed, with the first warnings it logged on the way (often the real cause)."""
    return f"{type(e).__name__}: {e}".rstrip(": ") + "".join(f"; {w}" for w in warnings[:2])


# ---- DOCX -------------------------------------------------------------------------------------------------------


def _read_docx(name: str, data: bytes) -> tuple[list[Section], dict[str, Any]]:
    import docx
    from docx.text.paragraph import Paragraph

    outline, title = _Outline("\n\n"), ""
    try:
        document = docx.Document(io.BytesIO(data))
        title = (document.core_properties.title or "").strip()
        for block in document.iter_inner_content():
            if not isinstance(block, Paragraph):
                outline.text(_docx_table(block))
                continue
            text, level = block.text.strip(), _heading_level(block)
            if level is None or not text:
                outline.text(text)
                continue
            title = title or (text if level == 0 else "")
            outline.heading(level, text, text)
    except Exception as e:  # noqa: BLE001 - zipfile, lxml and python-docx each raise their own errors on bad files
        raise CorruptDocument(f"{name}: not a readable DOCX file ({_reason(e)})") from None
    return outline.finish(), {"title": title} if title else {}


def _heading_level(paragraph: Any) -> int | None:
    """0 for the "Title" style, N for "Heading N", else None."""
    style = paragraph.style.name if paragraph.style is not None else ""
    if style == "Title":
        return 0
    m = re.fullmatch(r"Heading ([1-9])", style or "")
    return int(m.group(1)) if m else None


def _docx_table(table: Any) -> str:
    """A table's text, a row a line, cells joined by " | " (a merged cell once)."""
    from docx.text.paragraph import Paragraph

    rows = []
    for row in table.rows:
        cells, seen = [], set()
        for cell in row.cells:
            if id(cell._tc) in seen:
                continue
            seen.add(id(cell._tc))
            parts = (b.text if isinstance(b, Paragraph) else _docx_table(b) for b in cell.iter_inner_content())
            cells.append(" ".join(" ".join(parts).split()))
        if any(cells):
            rows.append(" | ".join(cells))
    return "\n".join(rows)


# ---- JSON and JSONL ---------------------------------------------------------------------------------------------


def _record(value: Any, index: int) -> Section:
    """A record's section: a string is its text; an object's text is its first string TEXT_FIELDS value, else all
    of it as "key: value" lines, and its other scalar fields become metadata."""
    if isinstance(value, str):
        return Section(value.strip(), {"record": index})
    if not isinstance(value, dict):
        return Section("" if value is None else json.dumps(value, ensure_ascii=False), {"record": index})
    key = next((k for k in TEXT_FIELDS if isinstance(value.get(k), str)), None)
    if key is not None:
        text = value[key]
    else:
        text = "\n".join(f"{k}: {v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)}"
                         for k, v in value.items())
    meta = {k: v for k, v in value.items() if k != key and isinstance(v, (str, int, float, bool))}
    meta["record"] = index
    return Section(text.replace("\r\n", "\n").replace("\r", "\n").strip(), meta)


def _json_error(e: json.JSONDecodeError | RecursionError) -> str:
    if isinstance(e, RecursionError):
        return "nested too deeply"
    return f"{e.msg} at line {e.lineno}, column {e.colno}"


def _read_json(name: str, data: bytes) -> tuple[list[Section], dict[str, Any]]:
    text = _text_of(name, data)
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        if isinstance(e, json.JSONDecodeError) and e.msg == "Extra data":  # JSON Lines saved as .json
            try:
                return _jsonl_records(name, text), {}
            except CorruptDocument:
                pass
        raise CorruptDocument(f"{name}: not valid JSON ({_json_error(e)})") from None
    records = value if isinstance(value, list) else [value]
    return [_record(r, i) for i, r in enumerate(records)], {}


def _jsonl_records(name: str, text: str) -> list[Section]:
    sections = []
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as e:
            raise CorruptDocument(f"{name}: line {number} is not valid JSON ({_json_error(e)})") from None
        sections.append(_record(value, len(sections)))
    return sections


def _read_jsonl(name: str, data: bytes) -> tuple[list[Section], dict[str, Any]]:
    return _jsonl_records(name, _text_of(name, data)), {}


# ---- extract ----------------------------------------------------------------------------------------------------

_READERS: dict[str, Callable[[str, bytes], tuple[list[Section], dict[str, Any]]]] = {
    "text/markdown": _read_markdown, "text/html": _read_html, "application/pdf": _read_pdf, DOCX_MIME: _read_docx,
    "application/json": _read_json, "application/jsonl": _read_jsonl, "application/x-ndjson": _read_jsonl,
}


def extract(filename: str, data: bytes, mime_type: str | None = None) -> Document:
    """Text sections of one file. Never raises anything but ExtractionError subclasses for bad input."""
    mime = detect_type(filename, data, mime_type)
    name = _label(filename)
    if not data or data.isspace():
        raise EmptyDocument(f"{name}: the file is empty")
    sections, metadata = _READERS.get(mime, _read_text)(name, data)
    sections = [s for s in sections if s.text.strip()]
    if not sections:
        raise EmptyDocument(f"{name}: the file has no text")
    return Document(filename, mime, sections, metadata)
