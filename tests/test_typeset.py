"""Typesetting finished covers (issue 13): placement, fit, contrast, fonts, the command, OCR read-back.

Everything here runs without a model, on small synthetic images (a few hundred milliseconds each).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cover_hpc import typeset as ts

SIZE = (448, 576)  # width, height: a portrait cover at half of SDXL's 896 x 1152


def flat(colour: tuple[int, int, int], size: tuple[int, int] = SIZE) -> np.ndarray:
    return np.full((size[1], size[0], 3), colour, dtype=np.uint8)


def noise(seed: int, size: tuple[int, int] = SIZE) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)


def black_white_noise(seed: int, size: tuple[int, int] = SIZE) -> np.ndarray:
    bits = np.random.default_rng(seed).integers(0, 2, (size[1], size[0], 1), dtype=np.uint8) * 255
    return np.repeat(bits, 3, axis=2)


def saturated_noise(seed: int, size: tuple[int, int] = SIZE) -> np.ndarray:
    """Pure red, green, blue, yellow, magenta and cyan pixels: luminances from 0.07 to 0.93."""
    palette = np.array([(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255), (0, 255, 255)])
    picks = np.random.default_rng(seed).integers(0, len(palette), (size[1], size[0]))
    return palette[picks].astype(np.uint8)


def thirds(top: np.ndarray, middle: np.ndarray, bottom: np.ndarray) -> Image.Image:
    height = top.shape[0]
    rows = [top[: height // 3], middle[height // 3 : 2 * height // 3], bottom[2 * height // 3 :]]
    return Image.fromarray(np.concatenate(rows))


def words_of(text: str) -> list[str]:
    return text.split()


# ------------------------------------------------------------------------------------------- colour math


def test_luminance_and_contrast_match_hand_computed_wcag_values() -> None:
    assert ts.relative_luminance((255, 255, 255)) == pytest.approx(1.0)
    assert ts.relative_luminance((0, 0, 0)) == 0.0
    assert ts.relative_luminance((255, 0, 0)) == pytest.approx(0.2126)
    assert ts.relative_luminance((0, 0, 255)) == pytest.approx(0.0722)
    # #767676: ((118/255 + 0.055) / 1.055) ** 2.4 = 0.18116; (1 + 0.05) / (0.18116 + 0.05) = 4.542
    grey = ts.relative_luminance((0x76, 0x76, 0x76))
    assert grey == pytest.approx(0.18116, abs=1e-5)
    assert ts.contrast_ratio(1.0, grey) == pytest.approx(4.542, abs=1e-3)
    assert ts.contrast_ratio(1.0, 0.0) == pytest.approx(21.0)
    assert ts.contrast_ratio(0.3, 0.3) == 1.0


def test_measure_picks_the_colour_whose_worst_pixels_read_best() -> None:
    red = np.full((50, 3), (255, 0, 0), dtype=np.uint8)
    found = ts.measure(red, (ts.WHITE, ts.BLACK))
    assert found.colour == ts.BLACK and found.worst5 == pytest.approx((0.2126 + 0.05) / 0.05)  # white: 3.998
    # mostly dark art with 3% white specks: the worst 1% is a speck (white text fails there), the worst 5% not
    specks = np.zeros((100, 3), dtype=np.uint8)
    specks[:3] = 255
    found = ts.measure(specks, (ts.WHITE, ts.BLACK))
    assert found.worst1 == pytest.approx(1.0) and found.worst5 == pytest.approx(21.0)
    assert found.luminance == (0.0, pytest.approx(0.0))


# ---------------------------------------------------------------------------------------------- placement


def test_title_goes_in_the_calm_band_and_author_in_the_calmer_of_the_rest() -> None:
    calm = flat((40, 90, 160))
    apart = ts.TypesetOptions(stacking="never")  # a short author line would otherwise go with the title
    layout = ts.typeset(thirds(noise(1), calm, noise(2)), "A Quiet Middle", author="Ada Stone", options=apart).layout
    assert layout.title.band_detail["middle"] < 0.01 < layout.title.band_detail["top"]  # measured calmest, but:
    # with 1 px colour noise over two thirds of the cover, a page reader binarising each channel takes the calm
    # blue for ink: white lettering plain on it was not read by tesseract (docs/PERFORMANCE.md), black on a panel was
    assert layout.title.band in ("top", "bottom") and layout.title.treatment == "panel"
    assert layout.author is not None and layout.author.band != layout.title.band
    assert set(layout.author.band_detail) == {"top", "bottom", "middle"} - {layout.title.band}

    gentle = np.clip(calm.astype(int) + np.random.default_rng(3).integers(-12, 13, calm.shape), 0, 255)
    art = thirds(noise(4), gentle.astype(np.uint8), calm)
    layout = ts.typeset(art, "Bottom Calm", author="Ben Bell", options=apart).layout
    assert (layout.title.band, layout.author.band) == ("bottom", "middle")
    # a short author line ("Ben Bell": 7 letters) goes with the title, between it and the art
    layout = ts.typeset(art, "Bottom Calm", author="Ben Bell").layout
    assert layout.author is not None and (layout.title.band, layout.author.band) == ("bottom", "bottom")
    assert layout.author.box[3] < layout.title.box[1]


def test_detail_is_the_mean_sobel_magnitude() -> None:
    step = np.zeros((40, 40, 3), dtype=np.uint8)
    step[:, 20:] = 255
    detail = ts.detail_map(Image.fromarray(step))
    assert detail[10, 19] == pytest.approx(1.0) and detail[10, 20] == pytest.approx(1.0)
    assert detail[10, 5] == 0.0
    assert ts.mean_detail(detail, (0, 0, 40, 40)) == pytest.approx(2 / 40)


# ---------------------------------------------------------------------------------------------------- fit


def assert_whole_and_inside(block: ts.TextBlock, width: int, height: int, margin: int) -> None:
    assert words_of(" ".join(block.lines)) == words_of(block.text)  # every word, none cut
    for left, top, right, bottom in block.line_boxes:
        assert margin <= left < right <= width - margin
        assert 0 <= top < bottom <= height


def test_long_titles_shrink_and_are_never_cut() -> None:
    image = Image.fromarray(flat((30, 30, 60)))
    short = ts.typeset(image, "Ice").layout
    long_title = "The Extraordinary and Entirely Improbable Voyage of the Clockwork Lighthouse Keeper 1899"
    long = ts.typeset(image, long_title, author="Iris Novak-Lindqvist").layout
    assert long.title.font_size < short.title.font_size
    assert 1 < len(long.title.lines) <= 3
    assert long.author is not None and long.author.font_size < long.title.font_size
    for layout in (short, long):
        assert layout.margin_px >= 0.06 * layout.width
        for block in (layout.title, layout.author):
            if block is not None:
                assert_whole_and_inside(block, layout.width, layout.height, layout.margin_px)


def test_a_title_that_cannot_fit_legibly_is_an_error_and_writes_nothing(tmp_path: Path) -> None:
    image = Image.fromarray(flat((200, 200, 200)))
    with pytest.raises(ts.TextDoesNotFit, match="minimum legible size"):
        ts.typeset(image, " ".join(["Interminable"] * 30))
    with pytest.raises(ts.TextDoesNotFit):
        ts.typeset(image, "Pneumonoultramicroscopicsilicovolcanoconiosis" * 2)  # one word: never broken
    source, out = tmp_path / "art.png", tmp_path / "cover.png"
    image.save(source)
    with pytest.raises(ts.TextDoesNotFit):
        ts.typeset_file(source, out, title=" ".join(["Interminable"] * 30))
    assert not out.exists()


def test_wrapping_balances_lines_and_keeps_words_whole() -> None:
    words = ts.tokens("one two three four five six")
    lines, _, handicap = ts._best_breaks(words, 2, lambda a, b: len(ts._join(words[a:b])))
    assert lines == ("one two three", "four five six") and handicap == 1


def test_a_line_does_not_end_in_a_short_word_that_leads_the_next(monkeypatch: pytest.MonkeyPatch) -> None:
    """A title broken "Essays on / Surveillance" read "Essays on. Surveillance" (tesseract, English): no more."""
    words = ts.tokens("Essays on Surveillance")
    lines, _, handicap = ts._best_breaks(words, 2, lambda a, b: len(ts._join(words[a:b])))
    assert lines == ("Essays", "on Surveillance") and handicap == 1
    assert [ts._strands(w) for w in ("a", "on", "Dr.", "I", "of", "the", "12", "1984", "東")] == [
        True, True, True, True, True, False, False, False, False]  # fmt: skip
    # where every break strands one, the handicap says so, and fit() weighs the line counts by it
    words = ts.tokens("Up in it")
    assert ts._best_breaks(words, 2, lambda a, b: len(ts._join(words[a:b])))[2] == 1 + ts.STRANDED_PENALTY
    block = ts.fit("Notes on a Quiet Life", ts.font_set([]).faces[0][0], (1400, 900), 3, (40, 400), "title")
    assert not any(ts._strands(line.split(" ")[-1]) for line in block.lines[:-1]), block.lines
    # refused, the size it names is the size the text would take, not the handicapped score: every break of
    # "Up in it" strands a short word, so the breaks are the same with the handicap off and so is the size
    face = ts.font_set([]).faces[0][0]
    needed = []
    for penalty in (ts.STRANDED_PENALTY, 0.0):
        monkeypatch.setattr(ts, "STRANDED_PENALTY", penalty)
        with pytest.raises(ts.TextDoesNotFit) as refused:
            ts.fit("Up in it", face, (100, 400), 2, (56, 400), "title")
        needed.append(refused.value.needed)
    assert needed[0] == pytest.approx(needed[1]) and needed[0] > 1
    assert ts.tokens("東京 物語") == [("", "東"), ("", "京"), (" ", "物"), ("", "語")]  # CJK breaks anywhere


# ----------------------------------------------------------------------------------------------- contrast


ADVERSARIAL = {
    "mid-grey": lambda: flat((119, 119, 119)),  # black 4.69, white 4.48: barely one way
    "grey-0x76": lambda: flat((0x76, 0x76, 0x76)),
    "black-white-noise": lambda: black_white_noise(5),
    "saturated-noise": lambda: saturated_noise(6),
    "pure-red": lambda: flat((255, 0, 0)),
    "red-blue-stripes": lambda: np.where(np.arange(SIZE[0])[None, :, None] // 3 % 2, flat((255, 0, 0)), (0, 0, 255)),
}


def glyphs_and_ring(result: ts.TypesetResult, block: ts.TextBlock) -> tuple[np.ndarray, np.ndarray]:
    """The glyphs drawn again with PIL from the layout's words (font, size, positions), and the ring 2 px to
    12% of the size around them (dilated with numpy here, not with the typesetter's code)."""
    from PIL import ImageDraw, ImageFont

    coverage = Image.new("L", result.image.size, 0)
    draw, font = ImageDraw.Draw(coverage), ImageFont.truetype(block.font_file, block.font_size)
    for word, x, y in block.words:
        draw.text((x, y), word, font=font, fill=255, anchor="ls")
    glyphs = np.asarray(coverage) > 0

    def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
        out = mask.copy()
        for dy in range(-radius, radius + 1):
            for dx in range(-radius, radius + 1):
                out |= np.roll(np.roll(mask, dy, axis=0), dx, axis=1)
        return out

    return glyphs, dilate(glyphs, max(3, round(block.font_size * 0.12))) & ~dilate(glyphs, 1)


def ring_contrast(result: ts.TypesetResult, block: ts.TextBlock) -> float:
    """Independent check of the finished image: the WCAG contrast of the text's colour against the worst 5%
    of the finished pixels around its glyphs."""
    pixels = np.asarray(result.image)
    _, ring = glyphs_and_ring(result, block)
    colour = tuple(int(block.colour[i : i + 2], 16) for i in (1, 3, 5))
    lum, own = ts.luminance(pixels[ring]), ts.relative_luminance(colour)  # type: ignore[arg-type]
    contrasts = (np.maximum(lum, own) + 0.05) / (np.minimum(lum, own) + 0.05)
    return float(np.percentile(contrasts, 5))


def _ramp_down(top: int, bottom: int) -> np.ndarray:
    rows = np.linspace(top, bottom, SIZE[1])[:, None, None]
    return np.broadcast_to(rows, (SIZE[1], SIZE[0], 3)).astype(np.uint8)


def _split(first: int, second: int) -> np.ndarray:
    art = flat((first,) * 3)
    art[SIZE[1] // 2 :] = second
    return art


ONE_BIT_ART = {  # art where a global threshold runs right through where the text would go
    "white to black": lambda: _ramp_down(255, 0),
    "black to white": lambda: _ramp_down(0, 255),
    "grey ramp": lambda: _ramp_down(200, 60),
    "white over black": lambda: _split(250, 5),
    "orange photo-like": lambda: (flat((230, 120, 40)) * 0.5 + _ramp_down(255, 0) * 0.5).astype(np.uint8),
}


@pytest.mark.parametrize("name", list(ONE_BIT_ART))
def test_the_lettering_survives_the_covers_own_one_bit_threshold(name: str) -> None:
    """A reader that binarises the whole cover at one global threshold (OCR engines, a fax, a photocopy, an
    e-ink thumbnail) keeps the text: at OpenCV's Otsu threshold of the finished cover's grey, the text's
    colour is on one side and at least 99% of the pixels right around its glyphs are on the other."""
    import cv2

    art = Image.fromarray(np.ascontiguousarray(ONE_BIT_ART[name]()))
    result = ts.typeset(art, "The Weight of Small Things", author="Claire Dubois")
    grey = cv2.cvtColor(np.asarray(result.image), cv2.COLOR_RGB2GRAY)
    threshold, _ = cv2.threshold(grey, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    for block in (result.layout.title, result.layout.author):
        assert block is not None
        _, ring = glyphs_and_ring(result, block)
        colour = np.asarray([[[int(block.colour[i : i + 2], 16) for i in (1, 3, 5)]]], dtype=np.uint8)
        text_light = int(cv2.cvtColor(colour, cv2.COLOR_RGB2GRAY)[0, 0]) > threshold
        around_light = grey[ring] > threshold
        same_side = float(np.mean(around_light == text_light))
        assert same_side <= 0.01, (block.role, block.treatment, block.band, threshold, same_side)


@pytest.mark.parametrize("name", list(ADVERSARIAL))
def test_contrast_reaches_4_5_on_adversarial_backgrounds(name: str) -> None:
    art = Image.fromarray(np.asarray(ADVERSARIAL[name](), dtype=np.uint8))
    result = ts.typeset(art, "Contrast Under Pressure", author="Kira Okafor")
    for block in (result.layout.title, result.layout.author):
        assert block is not None
        assert block.contrast >= block.contrast_worst >= 4.5
        assert ring_contrast(result, block) >= 4.5
        stacked = result.layout.author is not None and result.layout.author.band == result.layout.title.band
        if (name.endswith("noise") or name == "red-blue-stripes") and block.role == "author" and stacked:
            # set with the title ("Kira Okafor" is a short line): on the title's solid panel
            panel = result.layout.title.treatment_detail
            assert block.treatment == "none" and panel is not None and panel["alpha"] == 1.0
            assert panel["rows"][0] <= block.box[1] and block.box[3] <= panel["rows"][1]
        elif name.endswith("noise") or name == "red-blue-stripes":
            # busy art: a solid panel in from the nearest edge, never plain or a translucent stripe
            assert block.treatment == "panel" and block.band in ("top", "bottom")
            assert block.treatment_detail is not None and block.treatment_detail["alpha"] == 1.0
            assert block.detail <= ts.TypesetOptions().calm_detail
        else:  # calm art where black or white reads (barely, on the greys)
            assert block.treatment == "none"


def test_each_treatment_can_be_asked_for_and_reads() -> None:
    grey = Image.fromarray(flat((119, 119, 119)))
    for treatment in ("shadow", "wash", "panel"):
        result = ts.typeset(grey, "Asked For", author="Ida Vale", options=ts.TypesetOptions(treatment=treatment))
        for block in (result.layout.title, result.layout.author):
            assert block is not None and block.treatment == treatment and ring_contrast(result, block) >= 4.5
            if treatment == "panel":  # from an edge, in the art's palette (a grey art gives a grey panel)
                assert block.band in ("top", "bottom") and block.treatment_detail is not None
                rows = block.treatment_detail["rows"]
                assert rows[0] == 0 or rows[1] == result.layout.height
                r, g, b = (int(block.treatment_detail["colour"][i : i + 2], 16) for i in (1, 3, 5))
                assert r == g == b
    washed = ts.typeset(grey, "Asked For", options=ts.TypesetOptions(treatment="wash")).layout.title
    assert washed.treatment_detail is not None and 0 < washed.treatment_detail["alpha"] <= 0.4
    with pytest.raises(ValueError, match="treatment"):
        ts.TypesetOptions(treatment="stripe")  # type: ignore[arg-type]


def test_busy_art_gets_a_panel_even_where_the_colour_already_reads() -> None:
    dark_grain = Image.fromarray(np.random.default_rng(9).integers(0, 70, (SIZE[1], SIZE[0], 3), dtype=np.uint8))
    block = ts.typeset(dark_grain, "Grain").layout.title
    assert block.band_detail[block.band] > ts.TypesetOptions().calm_detail  # white reads on it, but it is busy
    assert block.treatment == "panel" and block.detail <= ts.TypesetOptions().calm_detail
    calm = ts.typeset(dark_grain, "Grain", options=ts.TypesetOptions(calm_detail=1.0)).layout.title
    # told the grain is calm, the typesetter still will not set the title plain on it: a page reader cutting each
    # channel at the cover's own Otsu threshold cuts through the grain (0-70), half of it ink around the letters
    assert calm.treatment == "panel" and calm.contrast >= 4.5
    bits = ts.reader_thresholds(ts._channel_histograms(np.asarray(dark_grain)))
    assert all(side < 0 or 0 < t < 70 for t, side in bits)


def test_lettering_keeps_off_the_salient_subject() -> None:
    """A calm field with one bright, detailed object in the top third: the title goes elsewhere."""
    art = flat((60, 80, 110))
    rng = np.random.default_rng(11)
    art[40:170, 120:330] = rng.integers(150, 256, (130, 210, 3), dtype=np.uint8)
    result = ts.typeset(Image.fromarray(art), "Off The Subject", author="Noor Haddad")
    layout = result.layout
    assert 0 < layout.salient_area < 0.3
    for block in (layout.title, layout.author):
        assert block is not None and block.band != "top" and block.salient_share < 0.05


def test_lettering_keeps_off_faces() -> None:
    from skimage import data

    art = Image.fromarray(data.astronaut())  # a portrait: her face in the upper middle
    result = ts.typeset(art, "The Right Stuff Again", author="Tom Wolfe", size=(512, 768))
    layout = result.layout
    assert layout.faces, "the face detector found no face on scikit-image's astronaut"
    for block in (layout.title, layout.author):
        assert block is not None and not block.on_face
        for face in layout.faces:
            left, top, right, bottom = block.box
            assert right <= face[0] or face[2] <= left or bottom <= face[1] or face[3] <= top


def test_the_cover_is_made_at_the_size_asked_for() -> None:
    art = np.zeros((150, 100, 3), dtype=np.uint8)
    art[:, :50] = (200, 30, 30)  # left half red, right half blue: a centred crop keeps both halves
    art[:, 50:] = (30, 30, 200)
    result = ts.typeset(Image.fromarray(art), "Sharp Letters", author="Ann Ode", size=(512, 768))
    assert result.image.size == (512, 768) and result.layout.art_size == (100, 150)
    assert (result.layout.width, result.layout.height) == (512, 768)
    assert result.layout.title.font_size >= 0.028 * 768  # set at the output size, not scaled up from the art's
    wide = ts.typeset(Image.fromarray(art), "Cropped", size=(600, 300))  # another aspect: cropped, not stretched
    pixels = np.asarray(wide.image)
    assert wide.image.size == (600, 300) and tuple(pixels[150, 5]) != tuple(pixels[150, 595])
    with pytest.raises(ts.TypesetError, match="output size"):
        ts.typeset(Image.fromarray(art), "Too Big", size=(100_000, 10))


def test_the_author_is_never_smaller_than_its_share_of_the_title() -> None:
    image = Image.fromarray(flat((30, 30, 60)))
    options = ts.TypesetOptions(title_max=0.14)  # a short title allowed to grow large, as a user may set it
    for title, author in (("Ice", "Wilhelmina Constance Fitzgerald-Abernathy"), ("Dune", "Frank Herbert")):
        layout = ts.typeset(image, title, author=author, options=options).layout
        assert layout.author is not None
        assert layout.author.font_size >= options.author_min_scale * layout.title.font_size
    alone = ts.typeset(image, "Ice", options=options).layout.title.font_size
    long_author = "Wilhelmina Constance Fitzgerald-Abernathy of Lower Wessex"
    crowded = ts.typeset(image, "Ice", author=long_author, options=options).layout
    assert crowded.title.font_size < alone  # the title gave up size so the long author line stays large enough


def test_the_art_passed_in_is_left_alone() -> None:
    art = Image.fromarray(black_white_noise(8))
    before = np.asarray(art).copy()
    ts.typeset(art, "Untouched", author="Tara Quinn")
    assert np.array_equal(np.asarray(art), before)


def test_options_below_the_rules_are_refused() -> None:
    with pytest.raises(ValueError, match="margin"):
        ts.TypesetOptions(margin=0.03)
    with pytest.raises(ValueError, match="target_contrast"):
        ts.TypesetOptions(target_contrast=3.0)


# -------------------------------------------------------------------------------------------------- fonts


def test_font_follows_genre_and_can_be_overridden() -> None:
    assert ts.genre_role(["science fiction"]) == "sans"
    assert ts.genre_role(["Thriller"]) == "sans"
    assert ts.genre_role(["historical fiction"]) == "serif"
    assert ts.genre_role(["literary", "romance"]) == "serif"
    assert ts.genre_role(["epic fantasy"]) == ts.genre_role(["horror"]) == "display"
    assert ts.genre_role(["fiction", "young adult", "dystopia"]) == "sans"  # the first specific genre decides
    assert ts.genre_role([]) == "serif"
    art = Image.fromarray(flat((20, 20, 20)))
    sans = ts.typeset(art, "Orbit", genres=["science fiction"]).layout
    display = ts.typeset(art, "Orbit", genres=["science fiction"], font="display").layout
    assert (sans.genre_role, display.genre_role) == ("sans", "display")
    assert sans.title.font_file != display.title.font_file
    custom = ts.font_set(font=ts.font_set([], "sans").faces[-1][0])
    assert custom.role == "custom" and len(custom.faces) == 1
    with pytest.raises(ts.TypesetError, match="no such font file"):
        ts.font_set(font="/nowhere/font.ttf")
    with pytest.raises(ts.TypesetError, match="not a font file"):
        ts.font_set(font=__file__)


def test_accented_titles_render_with_their_accents() -> None:
    title = "Ærøskøbing, São Paulo & Łódź: Dvořák in 1984"
    layout = ts.typeset(Image.fromarray(flat((240, 230, 200))), title).layout
    assert " ".join(layout.title.lines) == title
    assert ts.choose_face(title, ts.font_set(), "title") == layout.title.font_file


def test_cjk_titles_use_a_font_that_has_the_glyphs() -> None:
    fonts = ts.font_set()
    if not any(title.endswith(".ttc") for title, _ in fonts.faces):
        pytest.skip("no CJK font installed (Debian's fonts-wqy-microhei; make system-deps installs it)")
    layout = ts.typeset(Image.fromarray(flat((250, 250, 250))), "東京物語 Tokyo Story").layout
    assert layout.title.font_file.endswith("wqy-microhei.ttc")


def test_a_character_no_font_has_is_named() -> None:
    with pytest.raises(ts.MissingGlyph, match="U\\+13000 EGYPTIAN HIEROGLYPH A001") as caught:
        ts.typeset(Image.fromarray(flat((0, 0, 0))), "The Scribe 𓀀")
    assert caught.value.characters == ("𓀀",)
    dejavu = next(path for path, _ in ts.font_set([], "sans").faces if path.endswith("DejaVuSans-Bold.ttf"))
    with pytest.raises(ts.MissingGlyph, match="'東'"):  # a font given by the user: no fallback
        ts.typeset(Image.fromarray(flat((0, 0, 0))), "東 East", font=dejavu)


def test_text_that_is_not_text_is_refused() -> None:
    with pytest.raises(ts.TypesetError, match="empty"):
        ts.typeset(Image.fromarray(flat((0, 0, 0))), "   ")
    with pytest.raises(ts.TypesetError, match="U\\+0007"):
        ts.typeset(Image.fromarray(flat((0, 0, 0))), "Bell\x07")


# ---------------------------------------------------------------------------------------------- the command


def cover_hpc(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("cover-hpc") or str(Path(sys.executable).parent / "cover-hpc")
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=120)


def test_command_round_trip(tmp_path: Path) -> None:
    source, out = tmp_path / "art.png", tmp_path / "covers" / "finished.png"
    Image.fromarray(black_white_noise(9)).save(source)
    result = cover_hpc("typeset", str(source), "--title", "Zoë and the Machine", "--author", "Hugo Frost",
                       "--genres", "science fiction,thriller", "-o", str(out))  # fmt: skip
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["output"] == str(out) and record["genre_role"] == "sans"
    assert record["title"]["text"] == "Zoë and the Machine" and record["title"]["contrast"] >= 4.5
    assert record["author"]["text"] == "Hugo Frost"
    with Image.open(out) as cover:
        assert cover.size == SIZE
    off = cover_hpc("typeset", str(source), "--title", "Zoë and the Machine", "-o", str(out), "--page-read", "off")
    assert off.returncode == 0, off.stderr
    assert json.loads(off.stdout)["page_read"] == {"checked": False, "why": "no page reader asked for"}


def test_command_errors_are_one_line_and_write_nothing(tmp_path: Path) -> None:
    source, out = tmp_path / "art.png", tmp_path / "cover.png"
    Image.fromarray(flat((9, 9, 9))).save(source)
    for args, message in (
        (["--title", "word " * 80], "does not fit"),
        (["--title", "Scribe 𓀀"], "EGYPTIAN HIEROGLYPH"),
        (["--title", "x", "--font", "/nowhere.ttf"], "no such font file"),
    ):
        result = cover_hpc("typeset", str(source), *args, "-o", str(out))
        assert result.returncode == 1 and message in result.stderr
        assert "Traceback" not in result.stderr and not out.exists()
    result = cover_hpc("typeset", str(tmp_path / "missing.png"), "--title", "x", "-o", str(out))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    bomb = tmp_path / "bomb.png"  # 200 megapixels in a small file: Pillow's decompression-bomb guard
    Image.new("1", (20_000, 10_000)).save(bomb)
    result = cover_hpc("typeset", str(bomb), "--title", "x", "-o", str(out))
    assert result.returncode == 1 and "decompression bomb" in result.stderr and "resize the image" in result.stderr
    assert "Traceback" not in result.stderr and not out.exists()


# ------------------------------------------------------------------------------------------------ OCR


def ocr_engine() -> object:
    ocr = pytest.importorskip("cover_hpc.metrics.ocr")
    try:
        return ocr.load_ocr("auto")
    except ocr.OcrUnavailable as error:
        pytest.skip(str(error))


def test_command_verify_reads_the_cover_back(tmp_path: Path) -> None:
    ocr_engine()  # skips where no OCR engine is installed
    source, out = tmp_path / "art.png", tmp_path / "cover.png"
    Image.fromarray(noise(15)).save(source)
    result = cover_hpc("typeset", str(source), "--title", "Orchard Lanterns", "--author", "Ada Stone", "-o", str(out),
                       "--verify")  # fmt: skip
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)["ocr"]
    assert {k: record["title"][k] for k in ("read", "similarity", "exact")} == {
        "read": "Orchard Lanterns", "similarity": 1.0, "exact": True}  # fmt: skip
    assert record["author"]["exact"] and record["second"] == "tesseract"


def test_ocr_reads_typeset_titles_back_exactly_on_busy_images() -> None:
    """The read-back path on noise: titles in letters the engine knows (it has no Ł, Ø or Æ, and reads a
    serif ü as i, which benchmarks/typeset_accuracy.py counts against the 99% target; docs/PERFORMANCE.md,
    "Typesetting"). Capitals in three lines, whose word spaces the engine lost when it found the lines itself."""
    engine = ocr_engine()
    arts = [noise(10), black_white_noise(11), saturated_noise(12), thirds(noise(13), flat((90, 20, 20)), noise(14)),
            black_white_noise(15)]  # fmt: skip
    titles = ["The Silent Harbor", "Café Noir 1984", "Seven Crowns of Winter", "Last Light Over Málaga",
              "WINTER FIRE A MACHINE MEMORY CLOCKWORK 42 SEÑOR"]  # fmt: skip
    for art, title in zip(arts, titles, strict=True):
        image = art if isinstance(art, Image.Image) else Image.fromarray(art)
        record = ts.read_back(ts.typeset(image, title, author="Rosa Reyes", genres=["romance"]), engine, second=None)
        assert record["title"]["exact"] and record["author"]["exact"], (title, record)
        assert set(record["title"]["readers"]) == {"rapidocr"} and record["second"] is None
    assert len(record["title"]["read"].split()) == 8  # every space read, none taken from the layout


def second_reader() -> object:
    ocr = pytest.importorskip("cover_hpc.metrics.ocr")
    try:
        return ocr.load_second_reader()
    except ocr.OcrUnavailable as error:
        pytest.skip(str(error))


def test_a_line_the_first_reader_misses_is_read_again_and_a_line_neither_reads_fails() -> None:
    """PP-OCRv4's recogniser has no ß or Œ (it reads StraBe Euvre); tesseract's Latin model reads them.
    A line is confirmed by either reader; a line gone from the cover is read by neither, so the check
    still fails it and keeps the first reader's reading."""
    from PIL import ImageDraw

    engine, second = ocr_engine(), second_reader()
    art = Image.new("RGB", (896, 1152), (90, 120, 150))
    large = ts.TypesetOptions(title_max=0.14)  # a title on two lines, one per word, each read on its own
    result = ts.typeset(art, "Straße Œuvre", author="Zoë Brontë", genres=["thriller"], options=large)
    assert result.layout.title.lines == ("Straße", "Œuvre")
    alone = ts.read_back(result, engine, second=None)["title"]
    assert not alone["exact"] and alone["readers"] == ["rapidocr", "rapidocr"]
    record = ts.read_back(result, engine, second=second)
    assert record["second"] == "tesseract" and record["author"]["exact"]
    title = record["title"]
    assert title["exact"] and title["read"] == "Straße Œuvre" and title["readers"] == ["tesseract", "tesseract"]
    assert title["first"] == {"read": alone["read"], "exact": False}
    wiped = result.image.copy()
    ImageDraw.Draw(wiped).rectangle(result.layout.title.line_boxes[0], fill=(90, 120, 150))
    title = ts.read_back(ts.TypesetResult(wiped, result.layout), engine, second=second)["title"]
    assert not title["exact"] and title["similarity"] < 0.7 and title["readers"][0] == "rapidocr"


def test_a_missing_second_reader_is_named_with_its_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from cover_hpc.metrics import ocr

    monkeypatch.setenv("PATH", str(tmp_path))  # no tesseract on it
    with pytest.raises(ocr.OcrUnavailable, match="tesseract-ocr-script-latn"):
        ocr.load_second_reader()
    fake = tmp_path / "tesseract"  # a tesseract without the Latin data
    fake.write_text('#!/bin/sh\necho "List of available languages in /x (2):"; echo eng; echo osd\n')
    fake.chmod(0o755)
    with pytest.raises(ocr.OcrUnavailable, match=r"no data for Latin \(it has: eng, osd\).*tesseract-ocr-script-latn"):
        ocr.load_second_reader()


def test_command_verify_without_the_second_reader_writes_nothing(monkeypatch: pytest.MonkeyPatch,
                                                                tmp_path: Path) -> None:  # fmt: skip
    ocr_engine()
    fake = tmp_path / "bin" / "tesseract"  # a tesseract without the Latin data
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\necho "List of available languages (1):"; echo eng\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")
    source, out = tmp_path / "art.png", tmp_path / "cover.png"
    Image.fromarray(noise(15)).save(source)
    result = cover_hpc("typeset", str(source), "--title", "Orchard", "-o", str(out), "--verify")
    assert result.returncode == 1 and "tesseract-ocr-script-latn" in result.stderr
    assert "no cover written" in result.stderr and "Traceback" not in result.stderr and not out.exists()
    result = cover_hpc("typeset", str(source), "--title", "Orchard", "-o", str(out), "--verify", "--ocr-second", "none")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["ocr"]["second"] is None and out.is_file()


def test_a_stop_signal_to_the_job_does_not_fail_a_line_tesseract_is_reading(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """SLURM sends USR2 and TERM to every process of the step: a tesseract reading a line when one
    comes finishes the line (the job stops between covers) instead of dying and failing the cover."""
    from cover_hpc.metrics import ocr

    fake = tmp_path / "tesseract"  # signals itself as SLURM would, then answers
    fake.write_text('#!/bin/sh\nif [ "$1" = --list-langs ]; then echo "Languages (1):"; echo Latin; exit 0; fi\n'
                    'kill -USR2 $$; kill -TERM $$; cat >/dev/null; echo "Straße Œuvre"\n')  # fmt: skip
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    reader = ocr.load_second_reader()
    assert reader.read_lines([Image.new("RGB", (40, 20))]) == ["Straße Œuvre"]


def test_each_line_is_cropped_at_one_scale_around_its_baseline() -> None:
    result = ts.typeset(Image.fromarray(noise(16)), "THE LAST MAP OF THE FORGOTTEN KINGDOM AND ITS QUEEN Ångström")
    block = result.layout.title
    crops = ts.line_crops(result, block)
    assert len(crops) == len(block.lines) == len(block.baselines) == 3
    size = block.font_size
    above, below = round(ts.READ_ABOVE * size), round(ts.READ_BELOW * size)
    for crop, (left, top, right, bottom), baseline in zip(crops, block.line_boxes, block.baselines, strict=True):
        assert top < baseline <= bottom + 1  # the baseline crosses the line's ink (descenders below it)
        assert crop.width == right - left + 2 * round(ts.READ_SIDE * size)
        if baseline - above <= top and bottom <= baseline + below:  # capitals: the frame, not the ink, decides
            assert crop.height == above + below
        else:  # the ring of Å reaches higher: the crop grows to keep the ink whole
            assert crop.height == max(bottom, baseline + below) - min(top, baseline - above) > above + below
    assert [crop.height == above + below for crop in crops] == [True, True, False]


class LineBlindEngine:
    """An engine that can only find text itself: read_back gives it each text's square crop."""

    name = "line-blind"

    def __init__(self) -> None:
        self.sizes: list[tuple[int, int]] = []

    def read(self, image: Image.Image) -> str:
        self.sizes.append(image.size)
        return "Orchard Lanterns" if len(self.sizes) == 1 else "Ada Stone"


def test_read_back_gives_an_engine_without_read_lines_the_square_crop() -> None:
    engine = LineBlindEngine()
    result = ts.typeset(Image.fromarray(noise(17)), "Orchard Lanterns", author="Ada Stone")
    record = ts.read_back(result, engine)
    first = {"first": {"read": "Orchard Lanterns", "exact": True}, "readers": ["line-blind"]}
    assert record == {"engine": "line-blind", "second": None,
                      "title": {"read": "Orchard Lanterns", "similarity": 1.0, "exact": True, **first},
                      "author": {"read": "Ada Stone", "similarity": 1.0, "exact": True,
                                 "first": {"read": "Ada Stone", "exact": True}, "readers": ["line-blind"]}}  # fmt: skip
    assert [width == height for width, height in engine.sizes] == [True, True]


def test_a_book_the_typesetter_fails_on_keeps_its_art_and_the_others_are_finished(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Inference's finisher: a fault inside the typesetter on one book (here an OpenCV-like error) is that
    book's reason in the manifest, its art stays, and the next book is finished as usual."""
    from cover_hpc.spec.schema import InferConfig
    from cover_hpc.stages.infer import Finisher
    from cover_hpc.store.captions import Book
    from cover_hpc.store.paths import InferencePaths
    from cover_hpc.store.records import ManifestRow

    out = InferencePaths(tmp_path / "infer")
    out.images.mkdir(parents=True)
    finisher = Finisher(InferConfig(typeset_verify=False, cover_size=(768, 512)), out)
    real = ts.typeset

    def flaky(image: Image.Image, title: str, **kwargs: object) -> ts.TypesetResult:
        if title == "Broken":
            raise RuntimeError("cv2.error: (-215:Assertion failed) !ssize.empty()")
        return real(image, title, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(ts, "typeset", flaky)
    art = Image.fromarray(flat((40, 60, 90), (128, 192)))
    rows = {}
    for book_id, title in (("b1", "Broken"), ("b2", "Whole")):
        row = ManifestRow(book_id=book_id, prompt="p", seed=0, seconds=0.0, checkpoint_step=1)
        rows[book_id] = finisher.finish(Book(book_id=book_id, title=title, author="Ann Ode"), art, row)
    assert rows["b1"].image is None and rows["b1"].error is not None
    assert rows["b1"].error.startswith("typesetting failed: RuntimeError") and rows["b1"].art
    assert rows["b2"].error is None and rows["b2"].image is not None
    assert Image.open(out.root / rows["b2"].image).size == (512, 768)


def test_a_wash_for_the_author_never_tints_the_title_already_set() -> None:
    """Measured on the finished image, after both texts are set. On this crop of matplotlib's sample photo
    the author alone would read best under a light wash over the whole art, which would also lighten the
    title's panel under its white letters (3.05:1 when it was allowed): once a text is set, no new wash."""
    import matplotlib

    photo = Image.open(Path(matplotlib.get_data_path()) / "sample_data" / "Minduka_Present_Blue_Pack.png")
    photo = photo.convert("RGB")
    height = min(photo.height, photo.width * 3 / 2) * 0.55
    left, top = (photo.width - height * 2 / 3) * 0.3, (photo.height - height) * 0.7
    art = photo.resize((512, 768), Image.Resampling.LANCZOS, box=(left, top, left + height * 2 / 3, top + height))
    result = ts.typeset(art, "Midnight in Sevilla", author="Javier Méndez", genres=["romance"])
    assert result.layout.author is not None and result.layout.author.treatment != "wash"
    for block in (result.layout.title, result.layout.author):
        assert ring_contrast(result, block) >= 4.5, (block.role, block.treatment)


def _diagonal_stripes(period: int, size: tuple[int, int]) -> np.ndarray:
    ys, xs = np.mgrid[: size[1], : size[0]]
    colours = np.asarray([(200, 40, 40), (240, 220, 60), (40, 90, 200)], dtype=np.uint8)
    return colours[((xs + ys) // period) % len(colours)]


def test_art_busy_all_over_gets_lettering_fields_large_enough_for_a_page_reader() -> None:
    """Fine diagonal stripes over the whole art (what page readers take for a halftone screen, and drop
    the text beside): the panels grow until at most ``BUSY_MAX`` of the cover is left busy, or until they have
    grown by ``GROWTH_MAX`` of the height in all. Measured here by which pixels of the finished cover are still
    the art's own."""
    size = (400, 640)
    art = _diagonal_stripes(3, size)
    plain = ts.typeset(Image.fromarray(art), "The Baker's Daughter", author="Amélie Laurent", size=size,
                       options=ts.TypesetOptions(stacking="never"))  # fmt: skip
    assert plain.layout.title.treatment == "panel"
    kept = np.all(np.asarray(plain.image) == art, axis=-1)
    panels = [block.treatment_detail for block in (plain.layout.title, plain.layout.author)
              if block is not None and block.treatment == "panel"]  # fmt: skip
    assert len(panels) == 2
    solid = sum(rows[1] - rows[0] for rows in (panel["rows"] for panel in panels if panel is not None))
    assert solid >= ts.GROWTH_MAX * size[1]  # grown all the way: the stripes are everywhere
    assert kept.mean() <= 1 - ts.GROWTH_MAX, kept.mean()
    # stripes over the lower 60%: one group (stacked) has one panel, which grows until at most BUSY_MAX is busy
    art[: round(0.4 * size[1])] = (120, 140, 160)
    result = ts.typeset(Image.fromarray(art), "The Baker's Daughter", author="Amélie Laurent", size=size,
                        options=ts.TypesetOptions(stacking="always"))  # fmt: skip
    assert result.layout.title.treatment == "panel"
    kept = np.all(np.asarray(result.image) == art, axis=-1)[round(0.4 * size[1]) :]  # stripes left showing
    assert kept.sum() / (size[0] * size[1]) <= ts.BUSY_MAX + 0.02, kept.sum() / (size[0] * size[1])
    lettering = [block.box for block in (result.layout.title, result.layout.author) if block is not None]
    assert ts.busy_share(result.image, lettering) <= ts.BUSY_MAX


def test_art_with_a_subject_keeps_its_panels_as_small_as_the_text_needs(monkeypatch: pytest.MonkeyPatch) -> None:
    from skimage import data

    art = Image.fromarray(data.astronaut())
    assert ts.busy_share(ts.resample(art, (400, 640))) < ts.BUSY_MAX
    grown = ts.typeset(art, "Ashes", author="Mara Quinn", size=(400, 640))
    monkeypatch.setattr(ts, "GROWTH_MAX", 0.0)
    plain = ts.typeset(art, "Ashes", author="Mara Quinn", size=(400, 640))
    assert np.array_equal(np.asarray(grown.image), np.asarray(plain.image))


# ------------------------------------------------------------------------------ what page readers keep


def test_a_line_is_weak_when_short_of_eight_letters_or_of_its_width_to_height() -> None:
    face = ts.font_set((), "sans").faces[0][0]
    assert (ts.STRONG_LINE_GLYPHS, ts.STRONG_LINE_ASPECT) == (8, 6.5)
    assert ts.weak_line(ts.set_lines(["Ashes"], face, 100))  # 5 letters
    assert ts.weak_line(ts.set_lines(["Chen Wei"], face, 100))  # 7
    assert not ts.weak_line(ts.set_lines(["Mara Quinn"], face, 100))
    assert ts.weak_line(ts.set_lines(["The Glass Orchard", "Ashes"], face, 100))  # any line
    assert ts.weak_line(ts.set_lines(["MMMMMMMM"], face, 100)) is False
    assert ts.weak_line(ts.set_lines(["iiiiiiii"], face, 100))  # 8 letters, but narrower than 6.5 heights
    georgia = ts.set_lines(["Georgia Bell"], face, 100)  # 11 letters, ink about 5.5 heights wide: weak
    left, top, right, bottom = georgia.line_boxes[0]
    assert 5 < (right - left) / (bottom - top) < ts.STRONG_LINE_ASPECT and ts.weak_line(georgia)


def test_a_weak_line_goes_with_the_other_text_between_it_and_the_art() -> None:
    from skimage import data

    art = Image.fromarray(data.astronaut())
    layout = ts.typeset(art, "Ashes", author="Mara Quinn", size=(400, 640)).layout
    title, author = layout.title, layout.author
    assert author is not None and title.band == author.band and title.band in ("top", "bottom")
    if title.band == "top":  # the title at the cover's edge, the author on the art's side of it
        assert title.box[3] < author.box[1]
    else:
        assert author.box[3] < title.box[1]
    assert title.treatment == "panel" and author.treatment == "none"  # one panel behind both
    rows = title.treatment_detail["rows"]
    assert rows[0] <= min(title.box[1], author.box[1]) and max(title.box[3], author.box[3]) <= rows[1]
    apart = ts.typeset(art, "Ashes", author="Mara Quinn", size=(400, 640),
                       options=ts.TypesetOptions(stacking="never")).layout  # fmt: skip
    assert apart.author is not None and apart.author.band != apart.title.band
    both_strong = ts.typeset(art, "The Glass Orchard", author="Renée Marchetti", size=(400, 640)).layout
    assert both_strong.author is not None and both_strong.author.band != both_strong.title.band
    with pytest.raises(ValueError, match="stacking: got 'sometimes'; must be one of weak, always, never"):
        ts.TypesetOptions(stacking="sometimes")


def test_busy_share_sees_fine_patterns_at_full_size_and_photos_alike_at_any_size() -> None:
    from skimage import data

    stripes = Image.fromarray(_diagonal_stripes(4, (1600, 2560)))
    assert ts.busy_share(stripes) > 0.95  # the old measure, at 1280 px high, found none of it busy
    assert ts.busy_share(stripes, [(0, 0, 1600, 1280)]) <= 0.5 + 0.03  # lettering's tiles do not count
    astronaut = Image.fromarray(data.astronaut())
    small, large = (ts.busy_share(ts.resample(astronaut, size)) for size in ((400, 640), (1600, 2560)))
    assert small < ts.BUSY_MAX and large < ts.BUSY_MAX and abs(small - large) < 0.1, (small, large)


def test_a_page_readers_binarisation_takes_each_channels_smaller_side_for_ink() -> None:
    """Tesseract's binariser (src/ccstruct/otsuthr.cpp): each channel cut at its Otsu threshold, the side with
    under a quarter of the pixels taken for ink, a pixel ink where any channel says so."""
    light_page = np.zeros(256, np.int64)
    light_page[[20, 200]] = [100, 900]
    assert ts.minority_threshold(light_page) == (109.5, 1)  # dark minority, ink; any cut from 20 to 199 alike
    dark_page = np.zeros(256, np.int64)
    dark_page[[20, 200]] = [900, 100]
    assert ts.minority_threshold(dark_page) == (109.5, 0)  # light minority: values above the cut are ink
    halves = np.zeros(256, np.int64)
    halves[[20, 200]] = [500, 500]
    assert ts.minority_threshold(halves)[1] == -1
    assert [side for _, side in ts.reader_thresholds(np.stack([halves, halves, light_page]))] == [-1, -1, 1]
    assert ts.reader_thresholds(np.stack([halves] * 3))[0][1] >= 0  # none speaks: the first of the bad lot does
    # a cover of yellow and green (no blue), a light panel and black text on it: red and green split the art in
    # halves and say nothing; in blue the panel is the minority, so the panel is ink and the text paper
    cover = np.zeros((100, 100, 3), np.uint8)
    cover[:, :50] = (255, 200, 0)
    cover[:, 50:] = (60, 100, 0)
    cover[80:] = (250, 240, 225)
    cover[90:95, 10:60] = (0, 0, 0)
    bits = ts.reader_thresholds(ts._channel_histograms(cover))
    assert [side for _, side in bits] == [-1, -1, 0]
    assert not ts.reader_ink(np.array([[0, 0, 0]]), bits)[0] and ts.reader_ink(np.array([[250, 240, 225]]), bits)[0]


@pytest.mark.skipif(shutil.which("tesseract") is None, reason="needs Debian's tesseract (make system-deps)")
@pytest.mark.parametrize("kind", ["photo", "noise", "stripes", "logo"])
def test_a_page_reader_reads_title_and_author_on_the_whole_cover(kind: str, tmp_path: Path) -> None:
    """Debian's tesseract with its English model, the whole 1600x2560 cover in one page (not the typesetter's
    own line-by-line check): a five-letter title beside a photograph, on 16 px colour noise, on 4 px diagonal
    stripes, and on scikit-image's orange and green logo, each lost whole before (docs/PERFORMANCE.md,
    "Finished covers on any art")."""
    from skimage import data

    size = (1600, 2560)
    if kind == "photo":
        art, title, author = Image.fromarray(data.astronaut()), "Ashes", "Mara Quinn"
    elif kind == "noise":
        blocks = np.random.default_rng(7).integers(0, 256, (160, 100, 3), dtype=np.uint8)
        art, title, author = Image.fromarray(blocks).resize(size, Image.Resampling.NEAREST), "Orbit", "K. Nakamura"
    elif kind == "stripes":
        art, title, author = Image.fromarray(_diagonal_stripes(4, size)), "Beneath", "Owen Marsh"
    else:  # orange and green, little blue: a light panel is the blue channel's ink, black text on it its paper
        logo = Image.fromarray(data.logo())
        card = Image.alpha_composite(Image.new("RGBA", logo.size, (214, 226, 236, 255)), logo.convert("RGBA"))
        art, title, author = card.convert("RGB"), "Seven Bridges to Nowhere", "Kwame Asante"
    result = ts.typeset(art, title, author=author, size=size)
    path = tmp_path / "cover.png"
    result.image.save(path)
    read = subprocess.run(["tesseract", str(path), "stdout", "-l", "eng"], capture_output=True, text=True,
                          check=True, env={**os.environ, "OMP_THREAD_LIMIT": "1"}).stdout  # fmt: skip
    read = " ".join(read.split())
    assert title in read and author in read, read


def test_where_no_place_survives_a_page_readers_binarisation_the_cover_is_still_made_and_says_so() -> None:
    """Salt and pepper over blue: no place passes the per-channel check; the layout is made without it, and
    the record says so (docs/PERFORMANCE.md); on plain art the record says the check held."""
    rng = np.random.default_rng(5)
    art = flat((70, 110, 160), (1600, 2560)).astype(np.int64)
    salt = rng.random(art.shape[:2]) < 0.03
    art = np.where(salt[..., None], rng.integers(0, 2, (*art.shape[:2], 1)) * 255, art).astype(np.uint8)
    layout = ts.typeset(Image.fromarray(art), "The Quiet Year", author="Hannah Weiss").layout
    assert layout.page_reader_binarised is False and layout.contrast >= 4.5
    assert layout.to_dict()["page_reader_binarised"] is False
    assert ts.typeset(Image.fromarray(flat((235, 235, 235))), "Plain").layout.page_reader_binarised is True


# ------------------------------------------------------------------------------- the finished page, read whole


def _wavy_lines(size: tuple[int, int]) -> np.ndarray:
    """Black and white wavy lines over the whole art: tesseract read nothing on such a cover, panel or not."""
    ys, xs = np.mgrid[: size[1], : size[0]]
    u, v = xs / (size[0] - 1), ys / (size[1] - 1)
    waves = np.sin(u * 60 + np.sin(v * 8) * 3) > 0
    return np.where(waves[..., None], np.uint8(20), np.uint8(235)).repeat(3, 2).astype(np.uint8)


def _english_page_read(image: Image.Image, tmp_path: Path) -> str:
    """The benchmark's reader: Debian's tesseract, English model, default page segmentation, whole cover."""
    path = tmp_path / "page.png"
    image.save(path)
    read = subprocess.run(["tesseract", str(path), "stdout", "-l", "eng"], capture_output=True, text=True,
                          check=True, env={**os.environ, "OMP_THREAD_LIMIT": "1"}).stdout  # fmt: skip
    return " ".join(read.split())


def _has_latin_tesseract() -> bool:
    from cover_hpc.metrics import ocr

    try:
        ocr.load_page_reader()
    except ocr.OcrUnavailable:
        return False
    return True


@pytest.mark.skipif(not _has_latin_tesseract(), reason="needs Debian's tesseract and its Latin data (make system-deps)")
def test_a_cover_a_page_reader_loses_whole_is_washed_until_it_reads(tmp_path: Path) -> None:
    """Wavy lines over the whole art: laid out by design alone, tesseract (English, the benchmark's reader)
    finds neither text on the page; read back by the typesetter's own page reader (the Latin model), the art
    is washed and laid out again until the page reads, and the English reader then finds both."""
    art, size = Image.fromarray(_wavy_lines((1600, 2560))), (1600, 2560)
    designed = ts.typeset(art, "Tide", author="Harriet Cole", genres=["thriller"], page_reader=None)
    assert designed.layout.page_read == {"checked": False, "why": "no page reader asked for"}
    read = _english_page_read(designed.image, tmp_path)
    assert not ("Tide" in read and "Harriet Cole" in read), read
    checked = ts.typeset(art, "Tide", author="Harriet Cole", genres=["thriller"], size=size)
    page = checked.layout.page_read
    assert page is not None and page["checked"] and page["reads"] and page["tries"] > 1, page
    assert page["reader"] == "tesseract -l Latin --psm 3" and page["found"] == {"title": True, "author": True}
    assert checked.layout.art_wash is not None and checked.layout.art_wash["alpha"] in [a for _, a in ts.ART_WASHES]
    assert checked.layout.contrast >= 4.5
    read = _english_page_read(checked.image, tmp_path)
    assert "Tide" in read and "Harriet Cole" in read, read
    assert json.loads(json.dumps(checked.layout.to_dict()))["page_read"]["reads"] is True


class _Reader:
    """A page reader that answers from a list (the last answer repeats) and counts what it was shown."""

    def __init__(self, *answers: str, fail: bool = False) -> None:
        self.answers, self.fail, self.seen = list(answers), fail, 0
        self.name = "listed"

    def read(self, image: Image.Image) -> str:
        self.seen += 1
        if self.fail:
            raise RuntimeError("reader crashed")
        return self.answers[min(self.seen, len(self.answers)) - 1]


def test_where_no_change_reads_the_first_design_stands_marked_unread() -> None:
    art = Image.fromarray(noise(3))
    plain = ts.typeset(art, "Night Train", author="Ana Lima", genres=["thriller"], page_reader=None)
    reader = _Reader("")
    result = ts.typeset(art, "Night Train", author="Ana Lima", genres=["thriller"], page_reader=reader)
    page = result.layout.page_read
    assert page is not None and page["checked"] and not page["reads"]
    assert page["found"] == {"title": False, "author": False} and page["read"] == ""
    # every wash, then the other faces (the texts were not found at all, so the art is blamed first)
    assert page["tries"] == reader.seen == 1 + len(ts.ART_WASHES) + 1
    assert set(result.timings_ms) == {"layout", "render", "page_read"}  # the covers laid out again count as page read
    assert result.timings_ms["page_read"] > result.timings_ms["render"] > 0
    assert result.layout.art_wash is None and result.layout.genre_role == "sans"
    assert np.array_equal(np.asarray(result.image), np.asarray(plain.image))


def test_a_misread_page_sets_the_lettering_in_other_faces_first() -> None:
    """Every text found but misread (a sans capital I read as l): the letters are at fault, not the art; the
    next cover tried is the same art in the serif faces, which the reader then reads."""
    art = Image.fromarray(flat((200, 200, 205)))
    reader = _Reader("The Mars Protocol Dr. Ravi lyer", "The Mars Protocol Dr. Ravi Iyer")
    result = ts.typeset(art, "The Mars Protocol", author="Dr. Ravi Iyer", genres=["thriller"], page_reader=reader)
    layout = result.layout
    assert layout.page_read is not None and layout.page_read["reads"] and layout.page_read["tries"] == 2
    assert layout.genre_role == "serif" and layout.art_wash is None
    assert "P052" in layout.title.font_file or "Serif" in layout.title.font_file


def test_a_font_the_user_chose_is_never_changed_for_the_page_reader() -> None:
    reader = _Reader("The Mars Protocol Dr. Ravi lyer")
    result = ts.typeset(Image.fromarray(flat((200, 200, 205))), "The Mars Protocol", author="Dr. Ravi Iyer",
                        font="sans", page_reader=reader)  # fmt: skip
    assert result.layout.genre_role == "sans" and result.layout.page_read is not None
    assert result.layout.page_read["tries"] == 1 + len(ts.ART_WASHES) and not result.layout.page_read["reads"]


def test_a_reader_that_fails_leaves_the_cover_as_designed_with_the_reason() -> None:
    art = Image.fromarray(flat((30, 60, 90)))
    plain = ts.typeset(art, "Harbour Lights", page_reader=None)
    result = ts.typeset(art, "Harbour Lights", page_reader=_Reader(fail=True))
    page = result.layout.page_read
    assert page is not None and page["checked"] is False and page["error"] == "RuntimeError: reader crashed"
    assert np.array_equal(np.asarray(result.image), np.asarray(plain.image))


class _FailsSecond(_Reader):
    def read(self, image: Image.Image) -> str:
        self.seen += 1
        if self.seen > 1:
            raise TimeoutError("tesseract timed out after 120 s")
        return ""


def test_a_reader_that_fails_on_a_retry_is_not_asked_again_and_the_first_design_stands() -> None:
    art = Image.fromarray(flat((30, 60, 90)))
    plain = ts.typeset(art, "Harbour Lights", page_reader=None)
    reader = _FailsSecond()
    result = ts.typeset(art, "Harbour Lights", page_reader=reader)
    page = result.layout.page_read
    assert reader.seen == 2 and page is not None and page["tries"] == 2 and page["checked"] and not page["reads"]
    assert page["error"] == "TimeoutError: tesseract timed out after 120 s" and result.layout.art_wash is None
    assert np.array_equal(np.asarray(result.image), np.asarray(plain.image))


def test_without_tesseract_the_cover_is_made_and_the_record_says_why_it_was_not_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no tesseract on it
    layout = ts.typeset(Image.fromarray(flat((240, 236, 220))), "Harbour Lights").layout
    assert layout.page_read is not None and layout.page_read["checked"] is False
    assert "tesseract-ocr-script-latn" in layout.page_read["why"]
    with pytest.raises(ValueError, match="page_reader"):
        ts.typeset(Image.fromarray(flat((240, 236, 220))), "Harbour Lights", page_reader="eng")


def test_a_text_is_found_in_a_page_read_only_exactly() -> None:
    assert ts.found_in("The Art of Slow Travel", "Pierre Lefebvre The Art of\nSlow Travel")
    assert not ts.found_in("Iyer", "Dr. Ravi lyer") and not ts.found_in("Café", "Cafe Nocturne")
    assert ts.found_in("Café", "Cafe\u0301 Nocturne")  # the same letters, decomposed
    assert ts.nearest_read("Dr. Ravi Iyer", "The Mars Protocol Dr. Ravi lyer") == pytest.approx(1 - 1 / 13)
    assert ts.nearest_read("Moss", "") == 0.0


def test_a_title_outside_the_latin_script_is_not_page_read_and_the_record_says_why() -> None:
    reader = _Reader("")
    layout = ts.typeset(Image.fromarray(flat((240, 236, 220))), "Война и мир", author="Лев Толстой",
                        page_reader=reader).layout  # fmt: skip
    assert reader.seen == 0 and layout.page_read is not None and layout.page_read["checked"] is False
    assert "Latin script only" in layout.page_read["why"] and "В" in layout.page_read["why"]


def test_a_page_read_keeps_what_was_read_short_and_counts_typographic_quotes_as_the_same_mark() -> None:
    art = Image.fromarray(flat((240, 236, 220)))
    reader = _Reader("noise " * 400 + "What the River Didn\u2019t Say")
    page = ts.typeset(art, "What the River Didn't Say", page_reader=reader).layout.page_read
    assert page is not None and page["reads"] and page["tries"] == 1
    assert len(page["read"]) == ts.PAGE_READ_KEPT + 1 and page["read"].endswith("\u2026")


@pytest.mark.skipif(shutil.which("tesseract") is None, reason="needs Debian's tesseract (make system-deps)")
def test_a_sans_author_reversed_out_of_a_dark_ground_is_set_bold_and_read(tmp_path: Path) -> None:
    """White sans lettering on flat navy: in the regular weight tesseract's English model read the author as
    "Nalaatsyommtclaliaal"; the sans faces set the author bold, and it reads (docs/PERFORMANCE.md)."""
    art = Image.fromarray(flat((18, 28, 64), (1600, 2560)))
    result = ts.typeset(art, "Cascade Failure", author="Ahmed Rahimi", genres=["science fiction"], page_reader=None)
    assert result.layout.author is not None and result.layout.author.colour == "#ffffff"
    assert Path(result.layout.author.font_file).name in ("NimbusSans-Bold.otf", "LiberationSans-Bold.ttf",
                                                          "DejaVuSans-Bold.ttf")  # fmt: skip
    read = _english_page_read(result.image, tmp_path)
    assert "Cascade Failure" in read and "Ahmed Rahimi" in read, read
