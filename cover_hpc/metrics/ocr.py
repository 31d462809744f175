"""Reading titles back from covers: one OCR module for the title-legibility metric of validation
and the check of typeset covers.

- :func:`normalise_title`, :func:`title_similarity` and :func:`exact_match` compare an expected
  title with what OCR read after folding case, accents and punctuation and collapsing runs of
  spaces, so the score counts letters, digits and word breaks.
- :func:`load_ocr` returns an :class:`OcrEngine`. Both engines carry their model inside what
  installs them, so nothing is downloaded at run time (compute nodes have no network):

  ``rapidocr``   ``rapidocr-onnxruntime`` from PyPI (PP-OCRv4 detection and recognition models
                 in the wheel, run by onnxruntime on the CPU); a project dependency. The default.
  ``tesseract``  Debian's ``tesseract-ocr`` and ``tesseract-ocr-eng`` (the ``tesseract`` program,
                 run once per image); optional.

  ``benchmarks/ocr_engines.py`` chose the default: on 300 titles typeset over busy images,
  rapidocr scored 0.99 mean similarity and 84 % exact matches, tesseract 0.57 and 21 %
  (docs/PERFORMANCE.md, "OCR").
- :func:`ocr_title_scores` scores a set of images against their titles (what validation reports).
"""

from __future__ import annotations

import functools
import io
import os
import shutil
import subprocess
import unicodedata
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
from PIL import Image

ENGINES = ("rapidocr", "tesseract")
# Latin letters with a stroke, ligatures and others that NFKD leaves whole, folded like accents (as
# unidecode does); applied after casefold (which makes ß "ss"), to expected and read text alike.
_FOLD = str.maketrans({"ø": "o", "ł": "l", "đ": "d", "ð": "d", "ħ": "h", "ŧ": "t", "ı": "i", "æ": "ae", "œ": "oe",
                       "þ": "th", "ŋ": "ng"})  # fmt: skip


class OcrUnavailable(RuntimeError):
    """The OCR engine asked for is not installed; the message says what to install."""


def normalise_title(text: str) -> str:
    """Case folded, accents removed (NFKD, combining marks dropped; ø, ł, æ, œ, þ... folded too, as _FOLD
    says), punctuation and symbols removed, whitespace collapsed to single spaces. Spaces count: a title
    read with two words run together is not an exact match."""
    folded = unicodedata.normalize("NFKD", unicodedata.normalize("NFKD", text).casefold()).translate(_FOLD)
    kept = []
    for char in folded:
        category = unicodedata.category(char)
        if category[0] in "MPSC" and not char.isspace():  # marks, punctuation, symbols, controls
            continue
        kept.append(char)
    return " ".join("".join(kept).split())


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions, each 1)."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, 1):
        current = [i]
        for j, char_b in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b)))
        previous = current
    return previous[-1]


def title_similarity(expected: str, read: str) -> float:
    """1 - edit distance / length of the longer string, on normalised strings (1.0 when both are
    empty after normalising)."""
    a, b = normalise_title(expected), normalise_title(read)
    if not a and not b:
        return 1.0
    return 1.0 - levenshtein(a, b) / max(len(a), len(b))


def exact_match(expected: str, read: str) -> bool:
    """Whether the normalised strings are equal."""
    return normalise_title(expected) == normalise_title(read)


class OcrEngine(Protocol):
    name: str

    def read(self, image: Image.Image) -> str:
        """All the text in ``image``, lines joined by spaces, in reading order."""
        ...


class LineReader(Protocol):
    """An engine that can also read text whose lines are already found (both engines here)."""

    name: str

    def read_lines(self, images: Sequence[Image.Image]) -> list[str]:
        """The text of each image, each holding one line of text: recognition only, no detection."""
        ...


def _reading_order(boxes: Sequence[tuple[float, float, float, str]]) -> str:
    """Texts of (top, bottom, left, text) boxes top to bottom, and left to right within a line:
    a box joins the current line when its vertical centre lies within the line's first box."""
    lines: list[list[tuple[float, float, float, str]]] = []
    for box in sorted(boxes):
        top, bottom = box[0], box[1]
        if lines and lines[-1][0][0] <= (top + bottom) / 2 <= lines[-1][0][1]:
            lines[-1].append(box)
        else:
            lines.append([box])
    return " ".join(box[3] for line in lines for box in sorted(line, key=lambda b: b[2]))


class RapidOcr:
    """PP-OCRv4 (detection, angle classification, recognition) through rapidocr-onnxruntime."""

    name = "rapidocr"

    def __init__(self, threads: int | None = None) -> None:
        try:
            from rapidocr_onnxruntime import RapidOCR
        except ImportError as error:
            if "libGL" in str(error):  # installed, but opencv-python cannot load its system library
                raise OcrUnavailable(
                    f"OCR engine 'rapidocr' cannot load opencv-python ({error}); install Debian's libgl1 "
                    "(as root: apt-get install libgl1; make system-deps does it) or your system's Mesa libGL"
                ) from error
            raise OcrUnavailable(
                f"OCR engine 'rapidocr' needs the rapidocr-onnxruntime package ({error}); it is in "
                "requirements.txt: pip install -r requirements.txt (or make venv)"
            ) from error
        options: dict[str, Any] = {"intra_op_num_threads": threads} if threads else {}
        self._engine = RapidOCR(**options)
        # what the recogniser can answer: about 6,600 characters, Chinese, ASCII and a few accented Latin
        # letters (é, ü, ó...) but no Ł, Ø, Æ, Œ, ß, ñ, ö...: it reads a letter it lacks as one it has
        self.characters = frozenset(c for c in self._engine.text_rec.postprocess_op.character if len(c) == 1)

    def read(self, image: Image.Image) -> str:
        result, _ = self._engine(image.convert("RGB"))
        boxes = []
        for points, text, _score in result or ():
            ys, xs = [p[1] for p in points], [p[0] for p in points]
            boxes.append((min(ys), max(ys), min(xs), str(text)))
        return _reading_order(boxes)

    def read_lines(self, images: Sequence[Image.Image]) -> list[str]:
        """Recognition alone (no detection, no angle classifier), in one batch: for lines whose place is
        known, such as the lines a typesetter set. The recogniser scales each image to 48 px high, so
        the crop decides how large the type is in what it sees (see ``cover_hpc.typeset.line_crops``)."""
        if not images:
            return []
        bgr = [np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1]) for image in images]
        results, _ = self._engine.text_rec(bgr)
        return [" ".join(str(text).split()) for text, _score in results]


class TesseractOcr:
    """Debian's tesseract (LSTM) run as a program, with English data by default; ``--psm 11`` (sparse
    text) finds titles anywhere on a cover, which the automatic page layout misses over busy
    backgrounds. ``languages``: tesseract's ``-l`` (``Latin``: the Latin-script model, every Latin
    letter: Ł, Ø, Æ, ß, ñ...)."""

    name = "tesseract"

    def __init__(self, threads: int | None = None, psm: int = 11, languages: str = "eng") -> None:
        self._languages = languages
        self._program = shutil.which("tesseract")
        package = _TESSERACT_PACKAGES.get(languages, f"tesseract-ocr-{languages.lower()}")
        if self._program is None:
            raise OcrUnavailable(
                "OCR engine 'tesseract' needs the tesseract program, not found on PATH; install Debian's "
                f"tesseract-ocr and {package} (as root: apt-get install tesseract-ocr {package}; make "
                "system-deps does it)"
            )
        have = _tesseract_languages(self._program)
        missing = [name for name in languages.split("+") if name not in have]
        if missing:
            raise OcrUnavailable(
                f"tesseract has no data for {'+'.join(missing)} (it has: {', '.join(sorted(have)) or 'none'}); "
                f"install Debian's {package} (as root: apt-get install {package}; make system-deps does it)"
            )
        self._psm = psm
        self.description = f"tesseract -l {languages} --psm {psm}"
        self._env = {**os.environ, "OMP_THREAD_LIMIT": str(threads or 1)}

    def read(self, image: Image.Image) -> str:
        return self._run(image, self._psm)

    def read_lines(self, images: Sequence[Image.Image]) -> list[str]:
        """Each image as a single line of text (``--psm 7``), one run per image."""
        return [self._run(image, 7) for image in images]

    def _run(self, image: Image.Image, psm: int) -> str:
        png = io.BytesIO()
        image.convert("RGB").save(png, format="PNG", compress_level=1)
        result = subprocess.run(
            [*_IGNORING_STOP_SIGNALS, str(self._program), "stdin", "stdout", "-l", self._languages, "--psm", str(psm)],
            input=png.getvalue(), capture_output=True, env=self._env, timeout=120, check=False,
        )  # fmt: skip
        if result.returncode != 0:
            raise RuntimeError(f"tesseract failed ({result.returncode}): {result.stderr.decode(errors='replace')}")
        return " ".join(result.stdout.decode("utf-8", errors="replace").split())


#: Runs a program with the job's stop signals ignored. SLURM delivers them (USR2 before the time
#: limit, TERM on preemption) to every process of the step, and a terminal's Ctrl-C to the whole
#: foreground group; the job handles them between covers, and a read of one line (under a second)
#: is left to finish rather than fail the cover it was checking. ``trap ""`` ignores a signal, and an
#: ignored signal stays ignored across exec; SIGKILL still ends it. A shell rather than a
#: ``preexec_fn``, which runs Python between fork and exec and can deadlock in a process with
#: threads (torch's and onnxruntime's).
_IGNORING_STOP_SIGNALS = ("/bin/sh", "-c", 'trap "" INT TERM USR1 USR2; exec "$0" "$@"')


@functools.lru_cache(maxsize=4)
def _tesseract_languages(program: str) -> frozenset[str]:
    """The language data this tesseract has (``--list-langs``), asked once per program."""
    listed = subprocess.run([program, "--list-langs"], capture_output=True, text=True, check=False)
    return frozenset(line.strip() for line in (listed.stdout + listed.stderr).splitlines()[1:] if line.strip())


#: The Debian package of each tesseract language data used here.
_TESSERACT_PACKAGES = {"eng": "tesseract-ocr-eng", "Latin": "tesseract-ocr-script-latn"}


def load_second_reader(threads: int | None = None) -> LineReader:
    """The reader a typeset line goes to when the first one (rapidocr) did not read it exactly:
    tesseract's Latin-script model, which has the letters PP-OCRv4's recogniser lacks (Ł, Ø, Æ, Œ, ß,
    ñ, ö...) and keeps the word spaces it drops beside figures and in capitals. A different model from
    another family, so the two rarely miss the same line (``cover_hpc.typeset.read_back``). Raises
    OcrUnavailable, naming the Debian packages, when tesseract or its Latin data is missing."""
    return TesseractOcr(threads, languages="Latin")


def load_page_reader(threads: int | None = None) -> TesseractOcr:
    """The reader a finished cover is read with whole, as a page (``cover_hpc.typeset.typeset``): tesseract's
    Latin-script model with its automatic page layout (``--psm 3``), where the layout analysis, not the
    letters, is what loses lettering on busy art. Configured unlike the benchmark's reader (the English
    model, benchmarks/typeset_legibility.py). Raises OcrUnavailable, naming the Debian packages."""
    return TesseractOcr(threads, psm=3, languages="Latin")


def load_ocr(engine: str = "auto", threads: int | None = None) -> OcrEngine:
    """The OCR engine named (one of ENGINES), or ``auto``: rapidocr, the more accurate one.
    ``auto`` never falls back to another engine, so scores stay comparable between machines.
    Raises OcrUnavailable, naming what to install, when the engine is missing."""
    name = "rapidocr" if engine == "auto" else engine
    if name == "rapidocr":
        return RapidOcr(threads)
    if name == "tesseract":
        return TesseractOcr(threads)
    raise ValueError(f"unknown OCR engine {engine!r}; one of auto, {', '.join(ENGINES)}")


def ocr_title_scores(engine: OcrEngine, images: Sequence[Image.Image], titles: Sequence[str]) -> dict[str, Any]:
    """Read each image and compare it with its title: the engine's name, the mean title similarity,
    the exact-match rate (None for no images) and, per image, the title, what was read, its
    similarity and match."""
    if len(images) != len(titles):
        raise ValueError(f"{len(images)} images but {len(titles)} titles")
    per_image: list[dict[str, Any]] = []
    for image, title in zip(images, titles, strict=True):
        read = engine.read(image)
        similarity, exact = title_similarity(title, read), exact_match(title, read)
        per_image.append({"title": title, "read": read, "similarity": similarity, "exact": exact})
    count = len(per_image)
    return {
        "engine": engine.name,
        "count": count,
        "mean_similarity": sum(row["similarity"] for row in per_image) / count if count else None,
        "exact_match_rate": sum(row["exact"] for row in per_image) / count if count else None,
        "per_image": per_image,
    }
