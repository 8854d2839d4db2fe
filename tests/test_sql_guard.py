"""Read-only SQL that is read-only (issue 26 item 2), on the catalog under test (DuckDB, or the
PostgreSQL server of ``WDB_TEST_CATALOG=postgresql``, reached as a superuser): every escape is
refused in one line with a non-zero exit, and the catalog is unchanged afterwards; reads still
work; selections are expressions, and a bad one is one line with the database's hint."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from tests.conftest import ON_POSTGRES
from wdb.catalog import guard
from wdb.catalog.guard import check_read_only, check_selection
from wdb.cli.main import cli
from wdb.errors import BadInput
from wdb.store.spaces import Layout


@pytest.fixture
def filled(db):
    layout = Layout.from_arrays({"w": np.zeros((3, 2), np.float32), "b": np.zeros(2, np.float32)})
    rng = np.random.default_rng(0)
    for run in ("train_a", "train_b"):
        db.add_checkpoints(
            layout,
            rng.standard_normal((3, layout.n_params)).astype(np.float32),
            run=run,
            kind="training",
            zoo="toy",
        )
    return db


def wdb(db, *args):
    return CliRunner().invoke(cli, ["--db", str(db.path), *args])


def counts(db) -> dict[str, int]:
    tables = ("checkpoints", "runs", "spaces", "metrics")
    return {t: db.sql(f"SELECT count(*) AS n FROM {t}")[0]["n"] for t in tables}


def refused(res) -> str:
    """The one line a refused command printed (and its exit was non-zero)."""
    assert res.exit_code != 0, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    return lines[0]


def test_the_postgres_suite_is_a_superuser(filled):
    if not ON_POSTGRES:
        pytest.skip("PostgreSQL only")
    assert filled.sql("SELECT rolsuper FROM pg_roles WHERE rolname = current_user") == [
        {"rolsuper": True}
    ]


def escapes(tmp_path) -> list[str]:
    if ON_POSTGRES:
        secret = tmp_path / "secret.txt"
        secret.write_text("server secret\n")
        return [
            "ROLLBACK; DELETE FROM checkpoints",
            "COMMIT; DELETE FROM checkpoints",
            "commit; delete from metrics; delete from checkpoints; delete from runs",
            f"COPY (SELECT 1) TO PROGRAM 'touch {tmp_path}/pwned'",
            f"COPY checkpoints TO '{tmp_path}/pwned'",
            f"SELECT pg_read_file('{secret}')",
            f"SELECT pg_catalog.pg_read_file('{secret}', 0, 100)",
            f"SELECT * FROM pg_ls_dir('{tmp_path}')",
            f"SELECT lo_import('{secret}')",
            "SELECT set_config('log_statement', 'all', false)",
            "SELECT query_to_xml('SELECT 1', true, true, '')",
            "SELECT pg_terminate_backend(pg_backend_pid())",
            "SELECT * FROM pg_authid",
            "SET search_path TO public",
            "WITH d AS (DELETE FROM checkpoints RETURNING id) SELECT count(*) FROM d",
            "SELECT * INTO stolen FROM checkpoints",
            "EXPLAIN ANALYZE DELETE FROM checkpoints",
            "DO $$ BEGIN DELETE FROM checkpoints; END $$",
            "SELECT 1; SELECT 2",
        ]
    return [
        f"COPY checkpoints TO '{tmp_path}/pwned'",
        f"COPY (SELECT 1) TO '{tmp_path}/pwned' (FORMAT csv)",
        f"EXPORT DATABASE '{tmp_path}/pwned'",
        f"ATTACH '{tmp_path}/pwned' AS other",
        "INSTALL httpfs",
        "LOAD httpfs",
        "SET threads = 1",
        f"PRAGMA profile_output = '{tmp_path}/pwned'",
        "CALL pragma_table_info('runs')",
        "SELECT * FROM query('SELECT 1')",
        "SELECT 1; SELECT 2",
        f"SELECT 1; COPY checkpoints TO '{tmp_path}/pwned'",
        "DELETE FROM checkpoints",
        "CHECKPOINT",
        "CREATE SECRET s (TYPE s3, KEY_ID 'x', SECRET 'y')",
    ]


def test_each_escape_is_refused_in_one_line_and_the_catalog_is_unchanged(filled, tmp_path):
    before = counts(filled)
    assert before["checkpoints"] == 6
    for sql in escapes(tmp_path):
        line = refused(wdb(filled, "sql", sql))
        assert "read" in line or "refused" in line or "statements" in line, (sql, line)
        assert not (tmp_path / "pwned").exists(), sql
        assert counts(filled) == before, sql
        with pytest.raises(BadInput):  # the API refuses it too
            filled.sql(sql)
    assert not (tmp_path / "pwned").exists()
    assert counts(filled) == before


def test_two_statements_are_refused_by_the_database_too(filled, tmp_path):
    """Defence in depth: past the parser, the database's own checks still run one statement."""
    before = counts(filled)
    if ON_POSTGRES:  # a prepared statement: the server refuses a second command
        with pytest.raises(Exception, match="multiple commands"):
            filled.catalog.query_rows("ROLLBACK; DELETE FROM checkpoints", hardened=True)
    else:  # DuckDB's own parser counts the statements
        for sql in ("SELECT 1; DELETE FROM checkpoints", f"COPY runs TO '{tmp_path}/pwned'"):
            with pytest.raises(BadInput, match="DuckDB reads it as"):
                guard._duckdb_reads_one(sql, "SQL")
    assert counts(filled) == before
    assert not (tmp_path / "pwned").exists()


def test_reads_still_work(filled, tmp_path):
    res = wdb(filled, "sql", "SELECT count(*) AS n FROM checkpoints;", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.output) == [{"n": 6}]
    cte = (
        "WITH per AS (SELECT run_id, count(*) AS n FROM checkpoints GROUP BY run_id) "
        "SELECT r.name AS run, per.n FROM per JOIN runs r ON r.id = per.run_id ORDER BY r.name"
    )
    assert filled.sql(cte) == [{"run": "train_a", "n": 3}, {"run": "train_b", "n": 3}]
    view = filled.sql(
        "SELECT run, max(step) AS last FROM checkpoint_info WHERE kind = 'training' "
        "GROUP BY run ORDER BY run"
    )
    assert view == [{"run": "train_a", "last": 2}, {"run": "train_b", "last": 2}]
    assert filled.sql("SELECT 'a;b' AS s -- a comment; DELETE FROM runs") == [{"s": "a;b"}]
    assert filled.sql("VALUES (1)")
    assert wdb(filled, "sql", "EXPLAIN SELECT * FROM checkpoints").exit_code == 0
    if ON_POSTGRES:
        assert filled.sql("SHOW standard_conforming_strings") == [
            {"standard_conforming_strings": "on"}
        ]
    else:
        csv = tmp_path / "extra.csv"
        csv.write_text("run,note\ntrain_a,first\ntrain_b,second\n")
        rows = filled.sql(
            f"SELECT c.run, x.note FROM read_csv('{csv}') x JOIN checkpoint_info c "
            "ON c.run = x.run WHERE c.step = 0 ORDER BY c.run"
        )
        assert rows == [{"run": "train_a", "note": "first"}, {"run": "train_b", "note": "second"}]
        assert filled.sql("DESCRIBE runs")
        assert filled.sql("PRAGMA table_info('runs')")
        # no extension fetched or loaded behind a read (an https:// path would do both)
        got = filled.sql("SELECT current_setting('autoload_known_extensions') AS a")
        assert got == [{"a": False}]
    assert counts(filled)["checkpoints"] == 6


def test_csv_lines_end_in_newline_not_crlf(filled):
    res = wdb(filled, "sql", "SELECT name FROM runs ORDER BY name", "--csv")
    assert res.exit_code == 0, res.output
    assert res.output == "name\ntrain_a\ntrain_b\n"


def test_sql_help_says_what_is_allowed(filled):
    out = wdb(filled, "sql", "--help").output
    assert "exactly one statement that reads" in out
    for word in ("read_csv", "COPY", "ATTACH", "pg_read_file", "EXPLAIN"):
        assert word in out, word


def test_database_errors_are_one_line_with_the_hint(filled):
    line = refused(wdb(filled, "sql", "SELECT * FROM checkpoint"))
    assert "checkpoint" in line and "[SQL" not in line


def _hinted(line: str, typo: str = "stepp", column: str = "step") -> None:
    assert typo in line, line
    # DuckDB: 'Candidate bindings: "step", ...'; PostgreSQL: 'HINT: Perhaps you meant ... step'
    assert "Candidate bindings" in line or "Perhaps you meant" in line, line
    assert f'"{column}"' in line or f".{column}" in line, line


def test_bad_selections_are_one_line_with_the_hint(filled):
    _hinted(refused(wdb(filled, "ls", "checkpoints", "--where", "stepp = 1")))
    _hinted(refused(wdb(filled, "ls", "runs", "--where", "zooo = 'toy'")), "zooo", "zoo")
    _hinted(refused(wdb(filled, "evaluate", "--where", "stepp = 1")))
    _hinted(refused(wdb(filled, "query", "novelty", "--targets", "stepp > 0", "--no-save")))
    _hinted(refused(wdb(filled, "query", "nearest", "--run", "train_a", "--among", "stepp > 0")))
    with pytest.raises(BadInput, match="Candidate bindings|Perhaps you meant"):
        filled.checkpoints("stepp = 1")


def test_selections_are_expressions_never_statements(filled):
    before = counts(filled)
    for where in (
        "1=1; DROP TABLE runs",
        "1=1); DELETE FROM checkpoints; SELECT (1",
        "TRUE) UNION SELECT * FROM checkpoint_info WHERE (TRUE",
        "DELETE FROM checkpoints",
        "SELECT 1",
        "checkpoint_id IN (WITH d AS (DELETE FROM checkpoints RETURNING id) SELECT id FROM d)",
    ):
        line = refused(wdb(filled, "ls", "checkpoints", "--where", where))
        assert "--where" in line, line
        refused(wdb(filled, "evaluate", "--where", where))
        with pytest.raises(BadInput):
            filled.checkpoints(where)
        with pytest.raises(BadInput):
            filled.runs(where)
    assert counts(filled) == before
    # good selections: comments, subqueries that read, placeholders
    res = wdb(filled, "ls", "checkpoints", "--where", "step >= 1 -- the later ones", "--json")
    assert res.exit_code == 0, res.output
    assert len(json.loads(res.output)) == 4
    sub = "run IN (SELECT name FROM runs WHERE name LIKE '%_a')"
    assert [r["run"] for r in filled.checkpoints(sub)] == ["train_a"] * 3
    assert len(filled.checkpoints("run = :r AND step = 0", {"r": "train_b"})) == 1


@pytest.mark.parametrize("dialect", ["duckdb", "postgresql"])
def test_the_guard_alone(dialect):
    """The parser's verdicts, without a database (the shell calls the same function)."""
    ok = [
        "SELECT 1",
        "WITH a AS (SELECT 1 AS x) SELECT x FROM a UNION ALL SELECT 2",
        "SELECT count(*) FROM checkpoints c JOIN runs r ON r.id = c.run_id",
        "EXPLAIN SELECT 1",
        "SHOW search_path" if dialect == "postgresql" else "SHOW TABLES",
    ]
    for sql in ok:
        assert check_read_only(sql + " ;", dialect) == sql
    bad = [
        "SELECT 1; SELECT 2",
        "ROLLBACK",
        "BEGIN",
        "UPDATE runs SET name = 'x'",
        "INSERT INTO runs VALUES (1)",
        "DROP TABLE runs",
        "CREATE TABLE x AS SELECT 1",
        "EXPLAIN ANALYZE DELETE FROM runs",
        "COPY runs TO '/tmp/x'",
        "SELECT pg_read_file('/etc/passwd')" if dialect == "postgresql" else "ATTACH 'x.db'",
        "SELECT FROM WHERE (",
        "",
    ]
    for sql in bad:
        with pytest.raises(BadInput) as err:
            check_read_only(sql, dialect)
        assert "\n" not in str(err.value)
    assert check_selection("kind = 'training'", dialect) == "kind = 'training'"
    assert check_selection("step > 1 -- late", dialect).endswith("\n")  # the ")" survives
    assert check_selection(None, dialect) is None
    for where in ("1; DROP TABLE runs", "SELECT 1", "a = 1) OR (1 = 1"):
        with pytest.raises(BadInput, match="selection"):
            check_selection(where, dialect)


def test_columns_are_the_rows_as_arrays_and_as_guarded(filled):
    """``read_columns`` (a selection's keys as numpy columns) gives what ``read`` gives, on
    both catalogs, empty results included, and refuses what ``read`` refuses."""
    sql = "SELECT checkpoint_id, row FROM checkpoint_info WHERE step >= :s ORDER BY checkpoint_id"
    for s, n in ((1, 4), (99, 0)):
        cols, rows = guard.read(filled.catalog, sql, {"s": s})
        got = guard.read_columns(filled.catalog, sql, {"s": s})
        assert list(got) == cols == ["checkpoint_id", "row"]
        for j, c in enumerate(cols):
            assert np.asarray(got[c], dtype=np.int64).tolist() == [r[j] for r in rows]
        assert len(got["row"]) == n
    before = counts(filled)
    with pytest.raises(BadInput):
        guard.read_columns(filled.catalog, "DELETE FROM checkpoints RETURNING id")
    assert counts(filled) == before
