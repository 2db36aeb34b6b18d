"""herd/rag/extract.py on real files: PDFs written with fpdf2, DOCX with python-docx, HTML / Markdown / JSON text."""
from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import docx
import pytest
from fpdf import FPDF

from herd.errors import HerdError
from herd.rag.extract import (
    SUPPORTED_TYPES,
    CorruptDocument,
    Document,
    EmptyDocument,
    ExtractionError,
    Section,
    UnsupportedFileType,
    detect_type,
    extract,
)

DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"


def make_pdf(pages: list[str], title: str | None = None, owner_password: str | None = None,
             user_password: str | None = None) -> bytes:
    """A real PDF with one page per string ("" for a page with no text)."""
    pdf = FPDF()
    pdf.set_font("helvetica", size=12)
    if title:
        pdf.set_title(title)
    for text in pages:
        pdf.add_page()
        if text:
            pdf.multi_cell(0, 10, text)
    if owner_password:
        pdf.set_encryption(owner_password=owner_password, user_password=user_password)
    return bytes(pdf.output())


THREE_PAGES = ["Llamas are domesticated South American camelids.\nThey carry loads in the Andes.",
               "",
               "Vicunas are wild relatives of the llama and live at high altitude."]


def make_docx() -> bytes:
    document = docx.Document()
    document.add_heading("Herd Operations Manual", 0)
    document.add_paragraph("This manual explains how the herd server is run.")
    document.add_heading("Install", 1)
    document.add_heading("Linux", 2)
    document.add_paragraph("Create a virtual environment and run pip install llama-herd.")
    table = document.add_table(rows=2, cols=2)
    for (r, c), text in {(0, 0): "Distro", (0, 1): "Python", (1, 0): "Ubuntu 24.04", (1, 1): "3.12"}.items():
        table.cell(r, c).text = text
    document.add_heading("Serving", 1)
    document.add_paragraph("Start the server with herd serve --port 8321.")
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


ARTICLE_HTML = b"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Caring for llamas</title>
<script>window.analytics = "tracking-code-xyz";</script><style>body { color: red }</style></head>
<body>
<nav><ul><li><a href="/">Home</a></li><li><a href="/shop">Shop llama gear</a></li>
<li><a href="/login">Login</a></li></ul></nav>
<header><div class="banner">Subscribe to our newsletter for weekly deals!</div></header>
<main><article>
<h1>Caring for llamas</h1>
<p>Llamas are social animals and should never be kept alone; a herd of at least three keeps them calm and healthy.
Their diet is mostly grass and hay, with fresh water available at all times.</p>
<h2>Shearing</h2>
<p>Shear llamas once a year in late spring, leaving enough fibre to protect them from sunburn during summer.
A good shearer finishes an adult llama in about twenty minutes.</p>
<table><tr><th>Age</th><th>Fibre</th></tr><tr><td>Adult</td><td>3 kg</td></tr></table>
<h2>Hooves</h2>
<p>Trim their toenails every two to three months; overgrown nails make walking painful for the animal.</p>
</article></main>
<footer><p>Copyright 2024 Llama Gear Inc. All rights reserved. Privacy policy. Terms of service.</p></footer>
</body></html>"""


# ---- PDF --------------------------------------------------------------------------------------------------------


def test_pdf_pages_with_text_become_sections():
    doc = extract("animals.pdf", make_pdf(THREE_PAGES, title="Camelids"))
    assert doc.mime_type == "application/pdf"
    assert [s.metadata for s in doc.sections] == [{"page": 1}, {"page": 3}]
    assert "Llamas are domesticated South American camelids." in doc.sections[0].text
    assert "carry loads in the Andes" in doc.sections[0].text
    assert doc.sections[1].text == "Vicunas are wild relatives of the llama and live at high altitude."
    assert doc.metadata["pages"] == 3 and doc.metadata["title"] == "Camelids"
    assert "warnings" not in doc.metadata
    assert doc.text == doc.sections[0].text + "\n\n" + doc.sections[1].text


def test_pdf_truncated_or_random_bytes_is_corrupt():
    good = make_pdf(THREE_PAGES)
    with pytest.raises(CorruptDocument, match=r"^animals\.pdf: not a readable PDF"):
        extract("animals.pdf", good[: len(good) // 2])
    # pypdf's warnings (often the real cause) are in the message
    with pytest.raises(CorruptDocument, match=r"random\.pdf: .*invalid pdf header"):
        extract("random.pdf", os.urandom(4000))


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def root_records():
    """What reaches the root logger's handlers (pytest's own capture also hooks non-propagating loggers)."""
    handler = Records()
    logging.getLogger().addHandler(handler)
    yield handler.records
    logging.getLogger().removeHandler(handler)


def test_pdf_warnings_of_a_recovered_file_are_kept_in_metadata_not_logged(root_records):
    doc = extract("junk.pdf", b"JUNK" + make_pdf(["Text that survives a junk header."]))
    assert doc.text == "Text that survives a junk header."
    assert any("invalid pdf header" in w for w in doc.metadata["warnings"])
    assert not [r for r in root_records if r.name.startswith("pypdf")]


def test_pypdf_logging_outside_extract_still_reaches_the_root_logger(root_records):
    extract("animals.pdf", make_pdf(THREE_PAGES))  # installs the capture
    logging.getLogger("pypdf._reader").warning("logged by someone else")
    assert [r.getMessage() for r in root_records if r.name.startswith("pypdf")] == ["logged by someone else"]


def test_pypdf_warnings_stay_out_of_stderr():
    code = ("import os, sys\nfrom herd.rag.extract import extract, ExtractionError\n"
            "try:\n    extract('random.pdf', os.urandom(3000))\nexcept ExtractionError as e:\n    print(e)\n"
            "print(extract('junk.pdf', sys.stdin.buffer.read()).metadata['warnings'])\n")
    run = subprocess.run([sys.executable, "-c", code], input=b"JUNK" + make_pdf(["Some text."]), capture_output=True,
                         cwd=Path(__file__).resolve().parents[2], timeout=60, check=False)
    assert run.returncode == 0, run.stderr.decode()
    assert run.stderr == b""
    assert b"random.pdf: not a readable PDF" in run.stdout and b"invalid pdf header" in run.stdout


def test_pdf_that_needs_a_password_is_corrupt():
    with pytest.raises(CorruptDocument, match=r"locked\.pdf: .*encrypted"):
        extract("locked.pdf", make_pdf(THREE_PAGES, owner_password="owner", user_password="secret"))


def test_pdf_encrypted_with_an_owner_password_only_is_read():
    doc = extract("restricted.pdf", make_pdf(THREE_PAGES, owner_password="owner"))
    assert [s.metadata["page"] for s in doc.sections] == [1, 3]
    assert "Vicunas are wild relatives" in doc.text


def test_pdf_without_text_is_empty():
    with pytest.raises(EmptyDocument, match=r"scan\.pdf: no extractable text; scanned PDFs need OCR"):
        extract("scan.pdf", make_pdf(["", ""]))


# ---- Markdown ---------------------------------------------------------------------------------------------------


def test_markdown_sections_carry_their_heading_path():
    md = (b"Intro before any heading.\r\n\r\n"
          b"# Herd Guide\n\n"
          b"## Install\n\nPick a platform.\n\n"
          b"### Linux\n\nUse pip install llama-herd.\n\n"
          b"```sh\n# a comment, not a heading\npip install llama-herd\n```\n\n"
          b"### macOS ###\n\nSame as Linux.\n\n"
          b"## Serve\n\nRun herd serve.\n\n"
          b"Troubleshooting\n===============\n\nRead the logs.\n")
    doc = extract("guide.md", md)
    assert doc.mime_type == "text/markdown" and doc.metadata == {"title": "Herd Guide"}
    got = [(s.metadata.get("section"), s.text) for s in doc.sections]
    assert got[0] == (None, "Intro before any heading.")
    assert doc.sections[0].metadata == {}
    # a heading directly followed by a deeper one stays with it rather than being a section of its own
    assert got[1] == ("Herd Guide > Install", "# Herd Guide\n\n## Install\n\nPick a platform.")
    assert got[2][0] == "Herd Guide > Install > Linux"
    assert got[2][1].startswith("### Linux\n\nUse pip install llama-herd.")
    assert "# a comment, not a heading\npip install llama-herd\n```" in got[2][1]
    assert got[3] == ("Herd Guide > Install > macOS", "### macOS ###\n\nSame as Linux.")
    assert got[4] == ("Herd Guide > Serve", "## Serve\n\nRun herd serve.")
    assert got[5] == ("Troubleshooting", "Troubleshooting\n===============\n\nRead the logs.")
    assert len(got) == 6


def test_markdown_without_headings_is_one_section():
    doc = extract("notes.markdown", b"just a line\n\n#hashtag is not a heading\n")
    assert [(s.text, s.metadata) for s in doc.sections] == [("just a line\n\n#hashtag is not a heading", {})]


# ---- HTML -------------------------------------------------------------------------------------------------------


def test_html_article_text_without_boilerplate():
    doc = extract("llamas.html", ARTICLE_HTML)
    assert doc.mime_type == "text/html"
    assert doc.metadata["title"] == "Caring for llamas"
    text = doc.text
    assert "Llamas are social animals and should never be kept alone" in text
    assert "Shear llamas once a year in late spring" in text
    assert "Trim their toenails every two to three months" in text
    assert "Adult | 3 kg" in text
    for boilerplate in ("Shop llama gear", "newsletter", "All rights reserved", "tracking-code-xyz", "color: red"):
        assert boilerplate not in text
    paths = [s.metadata.get("section") for s in doc.sections]
    assert paths == ["Caring for llamas", "Caring for llamas > Shearing", "Caring for llamas > Hooves"]
    shearing = doc.sections[1].text
    assert shearing.startswith("Shearing\n\nShear llamas once a year") and "Age | Fibre" in shearing


def test_tiny_html_page_is_not_empty():
    page = b'<html><head><title>Hi</title></head><body><div class="footer">Back soon.</div></body></html>'
    doc = extract("status.htm", page)
    assert doc.text == "Back soon." and doc.metadata == {"title": "Hi"}


def test_html_falls_back_to_body_text_when_trafilatura_finds_nothing(monkeypatch):
    import trafilatura

    monkeypatch.setattr(trafilatura, "extract", lambda *a, **kw: None)
    page = ('<html><head><meta charset="iso-8859-1"><title>Caf\xe9 menu</title><style>p {}</style></head><body>'
            '<script>var hidden = 1;</script><h1>Caf\xe9</h1><p>Cr\xe8me br\xfbl\xe9e<br>Espresso</p>'
            '<div>Open <b>daily</b></div></body></html>').encode("latin-1")
    doc = extract("menu.html", page)
    assert doc.text == "Café\nCrème brûlée\nEspresso\nOpen daily"
    assert doc.metadata == {"title": "Café menu"}


def test_html_with_nothing_visible_is_empty():
    with pytest.raises(EmptyDocument, match="blank.html"):
        extract("blank.html", b"<html><head><script>x = 1</script></head><body>  </body></html>")


# ---- DOCX -------------------------------------------------------------------------------------------------------


def test_docx_headings_paragraphs_and_tables():
    doc = extract("manual.docx", make_docx())
    assert doc.mime_type == DOCX and doc.metadata == {"title": "Herd Operations Manual"}
    got = [(s.metadata.get("section"), s.text) for s in doc.sections]
    assert got == [
        ("Herd Operations Manual", "Herd Operations Manual\n\nThis manual explains how the herd server is run."),
        ("Herd Operations Manual > Install > Linux",
         ("Install\n\nLinux\n\nCreate a virtual environment and run pip install llama-herd.\n\n"
          "Distro | Python\nUbuntu 24.04 | 3.12")),
        ("Herd Operations Manual > Serving", "Serving\n\nStart the server with herd serve --port 8321."),
    ]


def test_docx_that_is_not_a_word_file_is_corrupt():
    with pytest.raises(CorruptDocument, match=r"broken\.docx: not a readable DOCX file"):
        extract("broken.docx", os.urandom(2000))
    other_zip = io.BytesIO()
    with zipfile.ZipFile(other_zip, "w") as z:
        z.writestr("hello.txt", "not a word document")
    with pytest.raises(CorruptDocument, match=r"zip\.docx: not a readable DOCX file"):
        extract("zip.docx", other_zip.getvalue())


# ---- JSON and JSONL ---------------------------------------------------------------------------------------------


def test_jsonl_records_with_metadata():
    lines = [
        {"id": 7, "title": "Llamas", "text": "Llamas hum when they are anxious.", "score": 0.5, "tags": ["a"]},
        {"content": "Alpacas are smaller than llamas.", "text": None, "public": True},
        "A plain string record.",
        {"name": "Vicuna", "habitat": {"altitude_m": 4000}},
    ]
    data = ("\n".join(json.dumps(x) for x in lines[:2]) + "\n\n" + "\n".join(json.dumps(x) for x in lines[2:])).encode()
    doc = extract("facts.jsonl", data)
    assert doc.mime_type == "application/jsonl"
    assert [(s.text, s.metadata) for s in doc.sections] == [
        ("Llamas hum when they are anxious.", {"id": 7, "title": "Llamas", "score": 0.5, "record": 0}),
        ("Alpacas are smaller than llamas.", {"public": True, "record": 1}),
        ("A plain string record.", {"record": 2}),
        ('name: Vicuna\nhabitat: {"altitude_m": 4000}', {"name": "Vicuna", "record": 3}),
    ]


def test_jsonl_bad_line_is_reported_by_number():
    data = b'{"text": "one"}\n\n{"text": "two"}\n{"text": broken}\n'
    with pytest.raises(CorruptDocument, match=r"^facts\.jsonl: line 4 is not valid JSON"):
        extract("facts.jsonl", data)


def test_json_list_and_single_object():
    records = [{"page_content": "First passage.", "source": "a.txt"}, {"body": "Second passage.", "n": 2},
               {"text": "  "}]
    doc = extract("docs.json", json.dumps(records).encode())
    assert doc.mime_type == "application/json"
    assert [(s.text, s.metadata) for s in doc.sections] == [
        ("First passage.", {"source": "a.txt", "record": 0}), ("Second passage.", {"n": 2, "record": 1})]
    one = extract("one.json", b'{"text": "Only record.", "lang": "en"}')
    assert [(s.text, s.metadata) for s in one.sections] == [("Only record.", {"lang": "en", "record": 0})]


def test_json_that_does_not_parse_is_corrupt():
    with pytest.raises(CorruptDocument, match=r"bad\.json: not valid JSON \(.* line 2"):
        extract("bad.json", b'[{"text": "a"},\n {"text": ]')
    # JSON Lines saved under .json is read as such
    assert extract("lines.json", b'{"text": "a"}\n{"text": "b"}\n').text == "a\n\nb"
    with pytest.raises(EmptyDocument):
        extract("none.json", b"[]")


# ---- plain text, empty files, unsupported types -----------------------------------------------------------------


def test_plain_text_decoding_and_newlines():
    assert extract("a.txt", b"line one\r\nline two\rline three\n").text == "line one\nline two\nline three"
    assert extract("bom.txt", "\ufeffcaf\u00e9".encode("utf-8")).text == "café"
    utf16 = extract("wide.csv", "name,kind\r\nDolly,llama\r\n".encode("utf-16"))
    assert utf16.text == "name,kind\nDolly,llama" and utf16.mime_type == "text/csv"
    doc = extract("script.py", b"print('hi')\n")
    assert doc.sections == [Section("print('hi')", {})] and doc.mime_type == "text/x-python"
    with pytest.raises(CorruptDocument, match=r"latin\.txt: not UTF-8 text"):
        extract("latin.txt", "café crème".encode("latin-1"))


@pytest.mark.parametrize("name,data", [("empty.txt", b""), ("blank.md", b"  \n\t\r\n"), ("empty.pdf", b""),
                                       ("blank.jsonl", b"\n\n"), ("bom.txt", b"\xef\xbb\xbf \n")])
def test_empty_files(name, data):
    with pytest.raises(EmptyDocument, match=name.replace(".", r"\.")):
        extract(name, data)


def test_unsupported_types():
    with pytest.raises(UnsupportedFileType) as info:
        extract("setup.exe", b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff" + os.urandom(512))
    message = str(info.value)
    assert message.startswith("setup.exe: unsupported file type") and ".pdf" in message and ".docx" in message
    with pytest.raises(UnsupportedFileType, match=r"image/png"):
        extract("", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(64), mime_type="image/png")


def test_errors_are_herd_errors_about_the_file():
    for cls in (UnsupportedFileType, EmptyDocument, CorruptDocument):
        assert issubclass(cls, ExtractionError) and issubclass(cls, HerdError)
    with pytest.raises(ExtractionError) as info:
        extract("x.txt", b"")
    assert info.value.param == "file"


# ---- detect_type ------------------------------------------------------------------------------------------------


def test_detect_type_by_extension_then_given_type_then_content():
    assert detect_type("REPORT.PDF", b"") == "application/pdf"
    assert detect_type("dir/notes.md", b"") == "text/markdown"
    assert detect_type(r"C:\docs\page.htm", b"") == "text/html"
    assert detect_type("upload", b"# x", mime_type="text/markdown; charset=utf-8") == "text/markdown"
    assert detect_type("upload", b"<p>x</p>", mime_type="application/xhtml+xml") == "text/html"
    assert detect_type("blob", make_pdf(["x"])) == "application/pdf"
    assert detect_type("blob", make_docx(), mime_type="application/octet-stream") == DOCX
    assert detect_type("blob", b"\n  <!DOCTYPE html><html><body>x</body></html>") == "text/html"
    assert detect_type("README", "plain words, café".encode()) == "text/plain"
    assert detect_type("Makefile", b"") == "text/plain"
    other_zip = io.BytesIO()
    with zipfile.ZipFile(other_zip, "w") as z:
        z.writestr("a.txt", "x")
    for binary in (other_zip.getvalue(), b"\x00\x01\x02\x03binary", b"\xff\xfe\xfd not utf-8"):
        with pytest.raises(UnsupportedFileType):
            detect_type("blob", binary)


def test_extract_sniffs_files_without_an_extension():
    doc = extract("upload-1", make_pdf(THREE_PAGES))
    assert doc.mime_type == "application/pdf" and [s.metadata["page"] for s in doc.sections] == [1, 3]
    assert extract("upload-2", make_docx()).metadata["title"] == "Herd Operations Manual"


def test_supported_types_cover_the_documented_extensions():
    for ext in (".txt", ".md", ".markdown", ".html", ".htm", ".pdf", ".docx", ".json", ".jsonl", ".csv", ".rst", ".py",
                ".log"):
        assert ext in SUPPORTED_TYPES
    assert isinstance(extract("a.rst", b"Title\n=====\n"), Document)


def test_bad_input_raises_only_extraction_errors():
    import random

    rng = random.Random(1234)
    pdf, word = make_pdf(THREE_PAGES), make_docx()

    def flipped(data: bytes, n: int) -> bytes:
        out = bytearray(data)
        for _ in range(n):
            out[rng.randrange(len(out))] = rng.randrange(256)
        return bytes(out)

    inputs = [rng.randbytes(3000), b"\xff\xfe\x00", pdf[:900], word[: len(word) // 3], flipped(pdf, 40),
              flipped(word, 40), b'{"text": "x"', b"<html><body>\x00\x01</body></html>", ARTICLE_HTML[:300]]
    outcomes = set()
    for data in inputs:
        for name in ("a.txt", "a.md", "a.html", "a.pdf", "a.docx", "a.json", "a.jsonl", "a.csv", "noextension"):
            try:
                outcomes.add(type(extract(name, data)).__name__)
            except ExtractionError as e:
                assert str(e).startswith(name + ":")
                outcomes.add(type(e).__name__)
    assert {"CorruptDocument", "UnsupportedFileType", "Document"} <= outcomes
