"""The data contract: a stage adds columns and never renames them, so no column is added twice."""

from curation.schema import DROPPED_SCHEMA, SAMPLE_SCHEMA, STAGE_COLUMNS


def test_no_stage_adds_a_column_the_table_already_has():
    seen = set(SAMPLE_SCHEMA.names)
    for stage, fields in STAGE_COLUMNS.items():
        names = {f.name for f in fields}
        assert not names & seen, stage
        seen |= names


def test_dropped_rows_name_the_sample_the_stage_and_why():
    assert DROPPED_SCHEMA.names == ["uid", "stage", "reason", "detail"]
