"""Expression and clinical tables in the real PanCanAtlas and cBioPortal layouts."""

import numpy as np
import pandas as pd
import pytest

from pathomch_assets.expression import MIRNA, MRNA, ExpressionFormatError, read_clinical, read_expression, read_traits

BARCODES = [
    "TCGA-A1-A0SB-01A-11R-A144-07",
    "TCGA-A1-A0SB-01B-21R-A144-07",  # two primary aliquots
    "TCGA-A1-A0SB-11A-11R-A144-07",  # normal tissue: ignored
    "TCGA-A2-A04P-01A-31R-A034-07",
    "TCGA-BH-A0E9-01A-11R-A056-07",
]


def mrna_file(tmp_path, rows=None, header=None):
    header = header or "gene_id\t" + "\t".join(BARCODES)
    rows = rows or ["?|100130426\t0\t0\t0\t0\t0", "MKI67|4288\t10\t20\t1000\tNA\t5.5", "ESR1|2099\t1\t2\t3\t4\t5"]
    p = tmp_path / "EBPlusPlusAdjustPANCAN_IlluminaHiSeq_RNASeqV2.geneExp.tsv"
    p.write_text(header + "\n" + "\n".join(rows) + "\n")
    return p


def test_aliquots_averaged_primary_only_na_kept(tmp_path):
    tab = read_expression(mrna_file(tmp_path), MRNA, ["MKI67"], key=lambda s: s.split("|")[0])
    v = tab.values.loc["MKI67"]
    assert v["TCGA-A1-A0SB"] == 15.0  # mean of 10 and 20; the normal aliquot (1000) ignored
    assert np.isnan(v["TCGA-A2-A04P"])  # NA stays missing
    assert v["TCGA-BH-A0E9"] == 5.5
    assert tab.n_aliquots["TCGA-A1-A0SB"] == 2 and tab.skipped_columns == 1


def test_only_requested_patients_columns(tmp_path):
    tab = read_expression(mrna_file(tmp_path), MRNA, ["ESR1"], key=lambda s: s.split("|")[0], patients={"TCGA-BH-A0E9"})
    assert list(tab.values.columns) == ["TCGA-BH-A0E9"]


def test_malformed_header_names_the_file(tmp_path):
    p = mrna_file(tmp_path, header="gene\t" + "\t".join(BARCODES))
    with pytest.raises(ExpressionFormatError) as err:
        read_expression(p, MRNA, ["MKI67"])
    assert str(p) in str(err.value) and "line 1" in str(err.value) and "gene_id" in str(err.value)


def test_non_barcode_column_is_rejected(tmp_path):
    p = mrna_file(tmp_path, header="gene_id\tsample1\t" + "\t".join(BARCODES[1:]))
    with pytest.raises(ExpressionFormatError, match=r"column 2: expected a TCGA aliquot barcode"):
        read_expression(p, MRNA, ["MKI67"])


def test_non_numeric_value_names_line_and_column(tmp_path):
    p = mrna_file(tmp_path, rows=["MKI67|4288\t10\tabc\t1\t1\t1"])
    with pytest.raises(ExpressionFormatError, match=r"line 2, column 3 \(TCGA-A1-A0SB-01B-21R-A144-07\).*'abc'"):
        read_expression(p, MRNA, ["MKI67"], key=lambda s: s.split("|")[0])


def test_truncated_line_and_duplicated_gene(tmp_path):
    p = mrna_file(tmp_path, rows=["MKI67|4288\t10\t20"])
    with pytest.raises(ExpressionFormatError, match=r"line 2: expected 6 fields .* found 3"):
        read_expression(p, MRNA, ["MKI67"], key=lambda s: s.split("|")[0])
    p = mrna_file(tmp_path, rows=["MKI67|4288\t1\t1\t1\t1\t1", "MKI67|4288\t2\t2\t2\t2\t2"])
    with pytest.raises(ExpressionFormatError, match=r"line 3: 'MKI67' appears again \(first on line 2\)"):
        read_expression(p, MRNA, ["MKI67"], key=lambda s: s.split("|")[0])


def test_missing_trait_is_named(tmp_path):
    with pytest.raises(ExpressionFormatError, match=r"no row for \['FOXA1'\]"):
        read_expression(mrna_file(tmp_path), MRNA, ["FOXA1"], key=lambda s: s.split("|")[0])


def test_mirna_csv_layout(tmp_path):
    p = tmp_path / "pancanMiRs_EBadjOnProtocolPlatformWithoutRepsWithUnCorrectMiRs_08_04_16.csv"
    p.write_text(
        "Genes,Correction," + ",".join(BARCODES) + "\n"
        "hsa-let-7a-5p,Corrected,1,1,1,1,1\n"
        "hsa-miR-17-5p,Corrected,4,6,100,7,NA\n"
    )
    df = read_traits(["miR-17-5p"], mrna=tmp_path / "none.tsv", mirna=p)
    got = df.set_index("patient_id")["value"]
    assert got["TCGA-A1-A0SB"] == 5.0 and got["TCGA-A2-A04P"] == 7.0 and np.isnan(got["TCGA-BH-A0E9"])
    bad = tmp_path / "bad.csv"
    bad.write_text("Genes," + ",".join(BARCODES) + "\n")
    with pytest.raises(ExpressionFormatError, match=r"bad\.csv: line 1: .*\['Genes', 'Correction'\]"):
        read_expression(bad, MIRNA, ["hsa-miR-17-5p"])


def test_reads_only_needed_rows_of_a_wide_file(tmp_path):
    """A 3000-column, 2000-gene file: memory stays far below the file's size."""
    import tracemalloc

    rng = np.random.default_rng(0)
    bcs = [f"TCGA-A{i % 10}-{i:04d}-01A-11R-A144-07" for i in range(3000)]
    p = tmp_path / "wide.tsv"
    with p.open("w") as fh:
        fh.write("gene_id\t" + "\t".join(bcs) + "\n")
        row = "\t".join(f"{x:.3f}" for x in rng.random(3000))
        for g in range(2000):
            fh.write(f"G{g}|{g}\t{row}\n")
    size = p.stat().st_size
    tracemalloc.start()
    tab = read_expression(p, MRNA, ["G1999"], key=lambda s: s.split("|")[0])
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert tab.values.shape == (1, 3000)
    assert peak < size / 5, (peak, size)


CLINICAL = """#Patient Identifier\tOverall Survival Status\tOverall Survival (Months)\tER Status By IHC\tSubtype
#Identifier\tStatus\tMonths\tER\tSubtype
#STRING\tSTRING\tNUMBER\tSTRING\tSTRING
#1\t1\t1\t1\t1
PATIENT_ID\tOS_STATUS\tOS_MONTHS\tER_STATUS_BY_IHC\tSUBTYPE
TCGA-A1-A0SB\t1:DECEASED\t12.5\tPositive\tBRCA_LumA
TCGA-A2-A04P\t0:LIVING\t40\tNegative\tBRCA_Basal
TCGA-BH-A0E9\tLIVING\t[Not Available]\t[Not Available]\t
TCGA-BH-A0EA\tDECEASED\t-3\tPositive\tBRCA_Her2
"""


def test_cbioportal_clinical_table(tmp_path):
    p = tmp_path / "data_clinical_patient.txt"
    p.write_text(CLINICAL)
    tab = read_clinical(p)
    df = tab.patients.set_index("patient_id")
    assert df.loc["TCGA-A1-A0SB"].tolist() == [12.5, 1, "Positive", "LumA"]
    assert df.loc["TCGA-A2-A04P", "os_event"] == 0
    assert len(df) == 2 and len(tab.problems) == 2
    assert any("line 8" in m and "no OS_STATUS/OS_MONTHS" in m for m in tab.problems)
    assert any("line 9" in m and "negative" in m for m in tab.problems)


def test_clinical_without_survival_columns_names_the_file(tmp_path):
    p = tmp_path / "data_clinical_patient.txt"
    p.write_text("#x\nPATIENT_ID\tAGE\nTCGA-A1-A0SB\t50\n")
    with pytest.raises(ExpressionFormatError, match=r"data_clinical_patient.txt: line 2: .*missing \['OS_STATUS'"):
        read_clinical(p)


# the same four patients as the three layouts the paper's and today's cBioPortal downloads give
PANCAN = """#Patient Identifier\tOverall Survival Status\tOverall Survival (Months)\tER\tSubtype
#Identifier\tStatus\tMonths\tER\tSubtype
#STRING\tSTRING\tNUMBER\tSTRING\tSTRING
#1\t1\t1\t1\t1
PATIENT_ID\tOS_STATUS\tOS_MONTHS\tER_STATUS_BY_IHC\tSUBTYPE
TCGA-A1-A0SB\t1:DECEASED\t12.5\tPositive\tBRCA_LumA
TCGA-A2-A04P\t0:LIVING\t40\tNegative\tBRCA_Basal
TCGA-BH-A0E9\t0:LIVING\t[Not Available]\tPositive\tBRCA_LumB
TCGA-E2-A15K\t1:DECEASED\t3.25\t[Not Available]\tBRCA_Her2
"""
# brca_tcga (Firehose Legacy) data_clinical_patient.txt: other columns first, older status spelling, no PAM50
FIREHOSE = (
    "#Other Patient ID\tPatient Identifier\tDiagnosis Age\tER Status By IHC\tOverall Survival (Months)"
    "\tOverall Survival Status\n"
    """#x\tx\tx\tx\tx\tx
#STRING\tSTRING\tNUMBER\tSTRING\tNUMBER\tSTRING
#1\t1\t1\t1\t1\t1
OTHER_PATIENT_ID\tPATIENT_ID\tAGE\tER_STATUS_BY_IHC\tOS_MONTHS\tOS_STATUS
6E7D5EC6\tTCGA-A1-A0SB\t70\tPositive\t12.5\tDECEASED
55262FCB\tTCGA-A2-A04P\t36\tNegative\t40\tLIVING
427D0648\tTCGA-BH-A0E9\t62\tPositive\t[Not Available]\tLIVING
A9E1D7B2\tTCGA-E2-A15K\t57\t[Not Available]\t3.25\tDECEASED
"""
)
# brca_tcga (Firehose Legacy) data_bcr_clinical_data_patient.txt: vital status and days (months x 30.4375)
FIREHOSE_BCR = """#Patient Identifier\tVital Status\tDays to Death\tDays to Last Followup\tER Status By IHC
#x\tx\tx\tx\tx
#STRING\tSTRING\tNUMBER\tNUMBER\tSTRING
#1\t1\t1\t1\t1
PATIENT_ID\tVITAL_STATUS\tDAYS_TO_DEATH\tDAYS_TO_LAST_FOLLOWUP\tER_STATUS_BY_IHC
TCGA-A1-A0SB\tDead\t380.46875\t[Not Applicable]\tPositive
TCGA-A2-A04P\tAlive\t[Not Applicable]\t1217.5\tNegative
TCGA-BH-A0E9\tAlive\t[Not Applicable]\t[Not Available]\tPositive
TCGA-E2-A15K\tDead\t98.921875\t[Not Applicable]\t[Not Available]
"""


def test_firehose_legacy_and_pancanatlas_give_the_same_survival(tmp_path):
    tables = {}
    for name, text in (("pancan", PANCAN), ("firehose", FIREHOSE), ("bcr", FIREHOSE_BCR)):
        (tmp_path / name).mkdir()
        p = tmp_path / name / "data_clinical_patient.txt"
        p.write_text(text)
        tables[name] = read_clinical(p)
    cols = ["patient_id", "os_months", "os_event", "er_status"]
    want = tables["pancan"].patients[cols]
    assert want["patient_id"].tolist() == ["TCGA-A1-A0SB", "TCGA-A2-A04P", "TCGA-E2-A15K"]
    for name in ("firehose", "bcr"):
        got = tables[name].patients[cols]
        pd.testing.assert_frame_equal(got, want, check_exact=False, rtol=1e-9)
        assert len(tables[name].problems) == 1 and "TCGA-BH-A0E9" in tables[name].problems[0]
    assert tables["pancan"].patients["subtype"].tolist() == ["LumA", "Basal", "Her2"]
    assert tables["firehose"].patients["subtype"].isna().all() and tables["firehose"].missing_columns == ["SUBTYPE"]
    assert tables["bcr"].layout.startswith("TCGA BCR") and tables["firehose"].layout.startswith("cBioPortal")


def test_bcr_biotab_header_rows_are_skipped(tmp_path):
    p = tmp_path / "nationwidechildrens.org_clinical_patient_brca.txt"
    p.write_text(
        "bcr_patient_barcode\tvital_status\tdays_to_death\tdays_to_last_followup\n"
        "bcr_patient_barcode\tvital_status\tdays_to_death\tdays_to_last_followup\n"
        "CDE_ID:2003301\tCDE_ID:5\tCDE_ID:3165475\tCDE_ID:3008273\n"
        "TCGA-A1-A0SB\tDead\t365.25\t[Not Applicable]\n"
    )
    tab = read_clinical(p)
    assert tab.patients[["patient_id", "os_months", "os_event"]].values.tolist() == [["TCGA-A1-A0SB", 12.0, 1]]
    assert not tab.problems
