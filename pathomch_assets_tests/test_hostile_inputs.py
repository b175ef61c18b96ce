"""Hostile and careless inputs (issue 15, items 2, 6 and 8): each is refused or reported with a
message naming the file (and line, key or column) and the problem, on real formats."""

import gzip
import hashlib
import os
import shutil
import textwrap

import numpy as np
import pytest

from pathomch_assets.config import ConfigError, load_config
from pathomch_assets.demo_cohort import write_pyramid
from pathomch_assets.expression import MRNA, ExpressionFormatError, read_clinical, read_expression, read_traits
from pathomch_assets.slides import (
    ManifestError,
    SlideError,
    check_manifest_entry,
    discover_cohort,
    discover_slides,
    open_slide,
    tiff_truncation,
)
from pathomch_assets.tiling import TilingParams, tile_slide

from .conftest import FIXTURES, OPENSLIDE
from .test_expression import BARCODES, CLINICAL, mrna_file

GDC = FIXTURES / "gdc" / "gdc_manifest_brca_head.txt"
HEADER = "id\tfilename\tmd5\tsize\tstate\n"
TINY = TilingParams(magnification=20, tile_px=8, max_background_fraction=1.0)


def md5(path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def manifest(tmp_path, *rows, name="manifest.txt"):
    p = tmp_path / name
    p.write_text(HEADER + "".join("\t".join(map(str, r)) + "\n" for r in rows))
    return p


@pytest.fixture
def layout(tmp_path):
    """``slides/`` (the cohort's slides_dir, one real slide in gdc-client layout) and ``outside/``
    holding a real slide the manifest must not reach."""
    slides, outside = tmp_path / "slides", tmp_path / "outside"
    (slides / "uuid-1").mkdir(parents=True)
    outside.mkdir()
    shutil.copy(OPENSLIDE / "small.svs", slides / "uuid-1" / "TCGA-AA-0001-01Z-00-DX1.svs")
    shutil.copy(OPENSLIDE / "small.svs", outside / "x.svs")
    return slides, outside


def only(refs):
    assert len(refs) == 1, refs
    return refs[0]


# ------------------------------------------------------------------ item 2: manifest path policy


def test_manifest_filename_with_dotdot_is_refused_not_read(layout, tmp_path):
    slides, outside = layout
    m = manifest(tmp_path, ("uuid-1", "../../outside/x.svs", md5(outside / "x.svs"), 2651, "released"))
    ref = only(discover_slides("c", slides, m))
    assert ref.missing and not ref.usable and ref.slide_id == "x"
    assert f"{m}: line 2: filename '../../outside/x.svs' is not a plain name" in ref.error
    assert "fix that line" in ref.error


def test_manifest_absolute_filename_is_refused(layout, tmp_path):
    slides, outside = layout
    m = manifest(tmp_path, ("uuid-1", str(outside / "x.svs"), "", "", "released"))
    ref = only(discover_slides("c", slides, m))
    assert ref.missing and f"{m}: line 2: filename {str(outside / 'x.svs')!r} is not a plain name" in ref.error


def test_manifest_id_with_dotdot_is_refused(layout, tmp_path):
    slides, _ = layout
    m = manifest(tmp_path, ("../outside", "x.svs", "", "", "released"))
    ref = only(discover_slides("c", slides, m))
    assert ref.missing and f"{m}: line 2: id '../outside' is not a plain name" in ref.error


def test_symlink_escaping_slides_dir_is_refused_unless_allowed(layout, tmp_path):
    slides, outside = layout
    (slides / "uuid-2").mkdir()
    link = slides / "uuid-2" / "TCGA-AA-0002-01Z-00-DX1.svs"
    link.symlink_to(outside / "x.svs")
    m = manifest(tmp_path, ("uuid-2", link.name, "", "", "released"))
    ref = only(discover_slides("c", slides, m))
    assert ref.missing and str(link) in ref.error and f"resolves to {outside / 'x.svs'}" in ref.error
    assert "allowed_dirs" in ref.error and f"listed in {m}, line 2" in ref.error
    by_folder = {r.slide_id: r for r in discover_slides("c", slides)}
    assert by_folder["TCGA-AA-0001-01Z-00-DX1"].usable
    assert not by_folder["TCGA-AA-0002-01Z-00-DX1"].usable and "outside" in by_folder["TCGA-AA-0002-01Z-00-DX1"].error
    # an explicit allow-list lets it in, and the slide opens
    ok = only(discover_slides("c", slides, m, allowed_dirs=[outside]))
    assert ok.usable and ok.path == link
    open_slide(ok.path).close()


def test_allowed_dirs_come_from_the_cohort_config(layout, tmp_path):
    slides, outside = layout
    (slides / "x.svs").symlink_to(outside / "x.svs")
    cfg_file = tmp_path / "p.yaml"
    cfg_file.write_text(
        textwrap.dedent(f"""
        data_dir: out
        duckdb_path: out/p.duckdb
        cohorts:
          c:
            slides_dir: slides
            mrna: {mrna_file(tmp_path).name}
            allowed_dirs: [outside]
            traits: [MKI67]
        """)
    )
    cfg = load_config(cfg_file)
    assert cfg.cohorts["c"].allowed_dirs == [outside.resolve()]
    assert all(r.usable for r in discover_cohort("c", cfg.cohorts["c"]))
    cfg_file.write_text(cfg_file.read_text().replace("[outside]", "[nowhere]"))
    with pytest.raises(ConfigError, match=r"cohorts\.c\.allowed_dirs: .*nowhere does not exist"):
        load_config(cfg_file)


def test_manifest_md5_and_size_are_parsed_from_the_real_gdc_layout(tmp_path):
    refs = discover_slides("brca", tmp_path, GDC)
    first = next(r for r in refs if r.slide_id.startswith("TCGA-AR-A5QM"))
    assert (first.md5, first.size) == ("361e57cec75dcf6c042d4ea207b3d1cc", 1047847767)
    assert first.listed_in == f"{GDC}:2" and first.missing and first.error is None


def test_slide_whose_size_differs_from_the_manifest_is_an_error(tmp_path):
    ref = next(r for r in discover_slides("brca", tmp_path, GDC) if r.slide_id.startswith("TCGA-AR-A5QM"))
    ref.path.parent.mkdir(parents=True)
    shutil.copy(OPENSLIDE / "small.svs", ref.path)  # a 2651-byte file where the manifest says 1047847767
    ref = next(r for r in discover_slides("brca", tmp_path, GDC) if r.slide_id.startswith("TCGA-AR-A5QM"))
    assert ref.usable
    msg = check_manifest_entry(ref)
    assert msg.startswith(str(ref.path)) and "2651 bytes, but the manifest" in msg and f"{GDC}:2" in msg
    assert "says 1047847767" in msg and "download it again" in msg


def test_slide_whose_md5_differs_from_the_manifest_is_an_error(layout, tmp_path):
    slides, _ = layout
    f = slides / "uuid-1" / "TCGA-AA-0001-01Z-00-DX1.svs"
    good = manifest(tmp_path, ("uuid-1", f.name, md5(f), f.stat().st_size, "released"), name="good.txt")
    assert check_manifest_entry(only(discover_slides("c", slides, good))) is None
    data = bytearray(f.read_bytes())
    data[-1] ^= 0xFF  # same size, one byte changed
    f.write_bytes(bytes(data))
    msg = check_manifest_entry(only(discover_slides("c", slides, good)))
    assert msg.startswith(str(f)) and f"MD5 {md5(f)} differs from the manifest's" in msg and f"{good}:2" in msg


def test_manifest_with_a_malformed_md5_or_size_names_the_line(tmp_path):
    m = manifest(tmp_path, ("u", "a.svs", "not-an-md5", 10, "released"))
    with pytest.raises(ManifestError, match=rf"{m.name}: line 2: md5 'not-an-md5' is not 32 hex digits"):
        discover_slides("c", tmp_path, m)
    m = manifest(tmp_path, ("u", "a.svs", "0" * 32, "ten", "released"))
    with pytest.raises(ManifestError, match=rf"{m.name}: line 2: size 'ten' is not a byte count"):
        discover_slides("c", tmp_path, m)


def test_manifest_listing_one_slide_twice_is_an_error(layout, tmp_path):
    slides, _ = layout
    name = "TCGA-AA-0001-01Z-00-DX1.svs"
    m = manifest(tmp_path, ("uuid-1", name, "", "", "released"), ("uuid-9", name, "", "", "released"))
    ref = only(discover_slides("c", slides, m))
    assert ref.missing and f"{m}: lines 2, 3: slide id 'TCGA-AA-0001-01Z-00-DX1' is listed 2 times" in ref.error


def test_manifest_with_a_bom_is_read(layout, tmp_path):
    slides, _ = layout
    m = tmp_path / "bom.txt"
    m.write_text("\ufeff" + HEADER + "uuid-1\tTCGA-AA-0001-01Z-00-DX1.svs\t\t\treleased\n", encoding="utf-8")
    assert only(discover_slides("c", slides, m)).usable


# ------------------------------------------------------------------ item 8: slides that are not what they seem


def test_zero_byte_slide_is_an_empty_file(tmp_path):
    p = tmp_path / "TCGA-AA-0001-01Z-00-DX1.svs"
    p.write_bytes(b"")
    res = tile_slide("c", p.stem, p, tmp_path / "t.tfrecord", TINY)
    assert res.status == "error" and res.error.startswith(str(p)) and "empty file (0 bytes)" in res.error
    assert "not a slide format" not in res.error


def test_truncated_svs_is_reported_truncated(tmp_path):
    p = tmp_path / "cut.svs"
    p.write_bytes((OPENSLIDE / "small.svs").read_bytes()[:1000])
    with pytest.raises(SlideError) as err:
        open_slide(p)
    msg = str(err.value)
    assert msg.startswith(str(p)) and "truncated or corrupt: the file has 1000 bytes" in msg
    assert "not a slide format" not in msg


def test_truncated_generated_pyramid_is_reported_truncated(tmp_path):
    rng = np.random.default_rng(0)
    full = tmp_path / "full.svs"
    write_pyramid(full, rng.integers(0, 255, (1024, 1024, 3), dtype=np.uint8), "aperio20")
    open_slide(full).close()
    assert tiff_truncation(full) is None
    data = full.read_bytes()
    for cut in (len(data) // 2, len(data) - 100):
        p = tmp_path / f"cut{cut}.svs"
        p.write_bytes(data[:cut])
        res = tile_slide("c", p.stem, p, tmp_path / "t.tfrecord", TINY)
        assert res.status == "error" and res.error.startswith(str(p))
        assert f"truncated or corrupt: the file has {cut} bytes" in res.error, res.error


def test_text_file_named_svs_is_not_a_slide_format(tmp_path):
    p = tmp_path / "x.svs"
    p.write_text("<html>404 Not Found</html>")
    with pytest.raises(SlideError, match=r"x\.svs: not a slide format OpenSlide reads \(26 bytes starting b'<html>"):
        open_slide(p)


def test_broken_symlink_is_an_error_ref_naming_the_link(layout):
    slides, outside = layout
    link = slides / "TCGA-AA-0003-01Z-00-DX1.svs"
    link.symlink_to(outside / "gone.svs")
    ref = {r.slide_id: r for r in discover_slides("c", slides)}["TCGA-AA-0003-01Z-00-DX1"]
    assert ref.missing and ref.error.startswith(str(link))
    assert f"broken symbolic link (to {outside / 'gone.svs'})" in ref.error
    with pytest.raises(SlideError, match="broken symbolic link"):
        open_slide(link)


def test_folder_named_like_a_slide_is_an_error_ref(layout):
    slides, _ = layout
    (slides / "TCGA-AA-0004-01Z-00-DX1.svs").mkdir()
    ref = {r.slide_id: r for r in discover_slides("c", slides)}["TCGA-AA-0004-01Z-00-DX1"]
    assert (
        ref.missing
        and ref.error
        == f"{slides / 'TCGA-AA-0004-01Z-00-DX1.svs'}: is a folder, not a slide file; "
        f"rename or remove it (or put the slide file in its place)"
    )
    with pytest.raises(SlideError, match="is a folder"):
        open_slide(slides / "TCGA-AA-0004-01Z-00-DX1.svs")


def test_fifo_named_like_a_slide_is_an_error_ref(layout):
    slides, _ = layout
    os.mkfifo(slides / "TCGA-AA-0005-01Z-00-DX1.svs")
    ref = {r.slide_id: r for r in discover_slides("c", slides)}["TCGA-AA-0005-01Z-00-DX1"]
    assert ref.missing and "is not a regular file" in ref.error


def test_same_slide_id_in_two_folders_names_both(layout):
    slides, _ = layout
    (slides / "uuid-2").mkdir()
    shutil.copy(OPENSLIDE / "small.svs", slides / "uuid-2" / "TCGA-AA-0001-01Z-00-DX1.svs")
    ref = only(discover_slides("c", slides))
    assert ref.missing and "slide id 'TCGA-AA-0001-01Z-00-DX1' found 2 times" in ref.error
    assert str(slides / "uuid-1" / "TCGA-AA-0001-01Z-00-DX1.svs") in ref.error
    assert str(slides / "uuid-2" / "TCGA-AA-0001-01Z-00-DX1.svs") in ref.error


def test_dicom_files_of_one_slide_are_one_slide_not_duplicates(tmp_path):
    d = tmp_path / "TCGA-AA-0006-01Z-00-DX1"
    d.mkdir()
    for f in ("boxes_0.dcm", "boxes_1.dcm"):
        shutil.copy(OPENSLIDE / f, d / f)
    ref = only(discover_slides("c", tmp_path))
    assert ref.usable and ref.slide_id == "TCGA-AA-0006-01Z-00-DX1"


# ------------------------------------------------------------------ item 6: configuration

CONFIG = """
data_dir: out
duckdb_path: out/p.duckdb
cohorts:
  brca:
    slides_dir: slides
    mrna: mrna.tsv
    traits: [MKI67]
"""


@pytest.fixture
def config_dir(tmp_path):
    (tmp_path / "slides").mkdir()
    (tmp_path / "mrna.tsv").write_text("gene_id\n")
    return tmp_path


def config(tmp_path, text, name="p.yaml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def test_duplicate_cohort_key_names_file_line_and_key(config_dir):
    p = config(config_dir, CONFIG + "  brca:\n    slides_dir: slides\n    mrna: mrna.tsv\n    traits: [ESR1]\n")
    with pytest.raises(ConfigError) as err:
        load_config(p)
    assert str(err.value).startswith(f"{p}: line 9: key 'brca' appears twice in the same mapping (first on line 5)")


def test_duplicate_tiling_section_names_file_line_and_key(config_dir):
    p = config(config_dir, CONFIG + "tiling:\n  tile_px: 256\ntiling:\n  magnification: 10\n")
    with pytest.raises(ConfigError, match=rf"{p.name}: line 11: key 'tiling' appears twice .*first on line 9"):
        load_config(p)


def test_duplicate_nested_key_is_refused(config_dir):
    p = config(config_dir, CONFIG + "tiling:\n  tile_px: 256\n  tile_px: 512\n")
    with pytest.raises(ConfigError, match=rf"{p.name}: line 11: key 'tile_px' appears twice"):
        load_config(p)


@pytest.mark.parametrize(
    "setting,value,expect",
    [
        ("tiling:\n  magnification", ".inf", "tiling.magnification: Input should be a finite number"),
        ("tiling:\n  magnification", ".nan", "tiling.magnification: Input should be a finite number"),
        ("tiling:\n  magnification", "400", "tiling.magnification: Input should be less than or equal to 100"),
        ("tiling:\n  magnification", "0.001", "tiling.magnification: Input should be greater than or equal to 1"),
        ("tiling:\n  tile_px", "100000", "tiling.tile_px: Input should be less than or equal to 4096"),
        ("tiling:\n  tile_px", ".inf", "tiling.tile_px: Input should be a finite number"),
        ("training:\n  learning_rate", ".inf", "training.learning_rate: Input should be a finite number"),
        ("training:\n  max_epochs", ".nan", "training.max_epochs: Input should be a finite number"),
    ],
)
def test_non_finite_or_out_of_range_numbers_are_refused(config_dir, setting, value, expect):
    p = config(config_dir, CONFIG + f"{setting}: {value}\n")
    with pytest.raises(ConfigError) as err:
        load_config(p)
    assert str(err.value).startswith(f"{p}: invalid configuration") and expect in str(err.value)


def test_non_finite_default_magnification_is_refused(config_dir):
    p = config(config_dir, CONFIG.replace("traits: [MKI67]", "traits: [MKI67]\n    default_magnification: .inf"))
    with pytest.raises(ConfigError, match=r"cohorts\.brca\.default_magnification: Input should be a finite number"):
        load_config(p)


def test_duckdb_path_pointing_at_a_folder_is_refused(config_dir):
    (config_dir / "db").mkdir()
    p = config(config_dir, CONFIG.replace("out/p.duckdb", "db"))
    with pytest.raises(ConfigError) as err:
        load_config(p, check_files=False)
    assert str(p) in str(err.value) and f"duckdb_path: Value error, {config_dir / 'db'} is a folder" in str(err.value)


def test_data_dir_that_cannot_be_created_is_refused_at_load(config_dir):
    (config_dir / "afile").write_text("x")
    p = config(config_dir, CONFIG.replace("data_dir: out", "data_dir: afile/out"))
    with pytest.raises(ConfigError) as err:
        load_config(p)
    assert str(err.value) == (
        f"{p}: data_dir: {config_dir / 'afile' / 'out'} cannot be created: "
        f"{config_dir / 'afile'} is a file, not a folder; choose another location"
    )


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write to read-only folders")
def test_read_only_data_dir_is_one_line_naming_the_folder(config_dir):
    (config_dir / "out").mkdir()
    (config_dir / "out").chmod(0o555)
    try:
        with pytest.raises(ConfigError) as err:
            load_config(config(config_dir, CONFIG))
    finally:
        (config_dir / "out").chmod(0o755)
    msg = str(err.value)
    assert "\n" not in msg and f"data_dir: {config_dir / 'out'} is read-only" in msg and "chmod u+w" in msg


# ------------------------------------------------------------------ item 8: molecular tables


def test_gzipped_expression_files_are_read(tmp_path):
    plain = mrna_file(tmp_path)
    gz = tmp_path / (plain.name + ".gz")
    gz.write_bytes(gzip.compress(plain.read_bytes()))
    key = lambda s: s.split("|")[0]  # noqa: E731
    a = read_expression(plain, MRNA, ["MKI67", "ESR1"], key=key).values
    b = read_expression(gz, MRNA, ["MKI67", "ESR1"], key=key).values
    assert a.equals(b) and b.loc["MKI67", "TCGA-A1-A0SB"] == 15.0
    mir = tmp_path / "mirs.csv.gz"
    mir.write_bytes(
        gzip.compress(("Genes,Correction," + ",".join(BARCODES) + "\nhsa-miR-17-5p,Corrected,4,6,100,7,NA\n").encode())
    )
    got = read_traits(["miR-17-5p"], mrna=plain, mirna=mir).set_index("patient_id")["value"]
    assert got["TCGA-A1-A0SB"] == 5.0


def test_truncated_gzip_names_the_file(tmp_path):
    plain = mrna_file(tmp_path)
    gz = tmp_path / "m.tsv.gz"
    gz.write_bytes(gzip.compress(plain.read_bytes())[:-30])
    with pytest.raises(ExpressionFormatError, match=r"m\.tsv\.gz: truncated or corrupt gzip file"):
        read_expression(gz, MRNA, ["ESR1"], key=lambda s: s.split("|")[0])


def test_non_utf8_expression_file_names_the_file(tmp_path):
    p = tmp_path / "m.tsv"
    p.write_bytes(b"gene_id\t" + "\t".join(BARCODES).encode() + b"\nMKI67|4288\t\xff\xfe\t1\t1\t1\t1\n")
    with pytest.raises(ExpressionFormatError, match=r"m\.tsv: not UTF-8 text"):
        read_expression(p, MRNA, ["MKI67"], key=lambda s: s.split("|")[0])


@pytest.mark.parametrize("raw", ["inf", "-inf", "Infinity"])
def test_infinite_expression_value_names_file_line_and_column(tmp_path, raw):
    p = mrna_file(tmp_path, rows=[f"MKI67|4288\t10\t20\t1000\t{raw}\t5.5"])
    with pytest.raises(ExpressionFormatError) as err:
        read_expression(p, MRNA, ["MKI67"], key=lambda s: s.split("|")[0])
    assert str(err.value).startswith(
        f"{p}: line 2, column 5 (TCGA-A2-A04P-01A-31R-A034-07): expected a finite number or NA, found {raw!r}"
    )


def test_bom_on_expression_and_clinical_headers_is_tolerated(tmp_path):
    p = mrna_file(tmp_path)
    p.write_text("\ufeff" + p.read_text(), encoding="utf-8")
    assert read_expression(p, MRNA, ["ESR1"], key=lambda s: s.split("|")[0]).values.shape == (1, 3)
    c = tmp_path / "data_clinical_patient.txt"
    c.write_text("\ufeff" + CLINICAL.split("\n", 4)[4], encoding="utf-8")  # header first, no '#' lines
    assert len(read_clinical(c).patients) == 2


def test_gzipped_clinical_file_is_read(tmp_path):
    c = tmp_path / "data_clinical_patient.txt.gz"
    c.write_bytes(gzip.compress(CLINICAL.encode()))
    assert sorted(read_clinical(c).patients.patient_id) == ["TCGA-A1-A0SB", "TCGA-A2-A04P"]


def test_clinical_file_with_no_valid_row_is_an_error_naming_the_file(tmp_path):
    c = tmp_path / "data_clinical_patient.txt"
    c.write_text("PATIENT_ID\tOS_STATUS\tOS_MONTHS\nTCGA-A1-A0SB\tmaybe\t3\nTCGA-A2-A04P\t1:DECEASED\t-1\n")
    with pytest.raises(ExpressionFormatError) as err:
        read_clinical(c)
    msg = str(err.value)
    assert msg.startswith(f"{c}: no usable patient row (of 2)")
    assert f"{c}: line 2: OS_STATUS 'maybe'" in msg and f"{c}: line 3: OS_MONTHS -1 is negative" in msg


def test_refused_and_mismatched_slides_become_error_rows_through_the_pipeline(tmp_path, monkeypatch):
    """Discovery refusals and manifest mismatches reach the `slides` table as `error` rows naming the file,
    through the real `slide_tiles` asset (partitions added as the sensor and the CLI add them); good
    slides are tiled; nothing outside `slides_dir` is read."""
    import hashlib
    import shutil

    from pathomch_assets.definitions import build_definitions
    from pathomch_assets.runner import materialize_all
    from pathomch_assets.tables import TableStore

    from .conftest import OPENSLIDE

    slides = tmp_path / "slides"
    outside = tmp_path / "outside"
    for d in (slides, outside):
        d.mkdir()
    good, bad_md5 = "TCGA-AA-0001-01Z-00-DX1.GOOD", "TCGA-AA-0002-01Z-00-DX1.BADMD5"
    for sid in (good, bad_md5):
        (slides / sid).mkdir()
        shutil.copy(OPENSLIDE / "small.svs", slides / sid / f"{sid}.svs")
    digest = hashlib.md5((OPENSLIDE / "small.svs").read_bytes()).hexdigest()
    size = (OPENSLIDE / "small.svs").stat().st_size
    shutil.copy(OPENSLIDE / "small.svs", outside / "x.svs")
    (slides / "esc").mkdir()
    (slides / "esc" / "TCGA-AA-0003-01Z-00-DX1.ESC.svs").symlink_to(outside / "x.svs")
    manifest = tmp_path / "manifest.txt"
    manifest.write_text(
        "id\tfilename\tmd5\tsize\tstate\n"
        f"{good}\t{good}.svs\t{digest}\t{size}\treleased\n"
        f"{bad_md5}\t{bad_md5}.svs\t{'0' * 32}\t{size}\treleased\n"
        f"esc\tTCGA-AA-0003-01Z-00-DX1.ESC.svs\t{digest}\t{size}\treleased\n"
    )
    (tmp_path / "mrna.tsv").write_text("gene_id\n")
    (tmp_path / "mirna.csv").write_text("Genes,Correction\n")
    config = tmp_path / "pathomch.yaml"
    config.write_text(
        "data_dir: out\nduckdb_path: out/p.duckdb\n"
        "tiling: {magnification: 20, tile_px: 16, max_background_fraction: 1.0}\n"
        "cohorts:\n  brca:\n    slides_dir: slides\n    manifest: manifest.txt\n    mrna: mrna.tsv\n"
        "    mirna: mirna.csv\n    traits: [MKI67, miR-17-5p]\n    default_magnification: 20\n"
    )
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PATHOMCH_CONFIG", str(config))
    cfg = load_config(config)
    assert not materialize_all(build_definitions(cfg), cfg, selection="slide_tiles", log=lambda *a: None).failed
    rows = TableStore(cfg.tables_dir, cfg.duckdb_path).query("select slide_id, status, error from slides")
    rows = rows.set_index("slide_id")
    assert rows.status[good] == "ok"
    assert rows.status[bad_md5] == "error" and "MD5" in rows.error[bad_md5] and f"{bad_md5}.svs" in rows.error[bad_md5]
    esc = "TCGA-AA-0003-01Z-00-DX1.ESC"
    assert rows.status[esc] == "error" and "outside" in rows.error[esc]
