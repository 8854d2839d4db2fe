"""Progress in a log: with ``WDB_PROGRESS=lines`` long work prints plain lines with rate and ETA
(the demo's fits and samplers are never silent for minutes); lines by default when not a terminal."""

from __future__ import annotations

import time

from wdb.progress import mode, progress


def _lines(text: str, label: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.startswith(label)]


def test_lines_mode_prints_a_line_per_interval_with_an_eta(monkeypatch, capsys):
    monkeypatch.setenv("WDB_PROGRESS", "lines")
    monkeypatch.setenv("WDB_PROGRESS_EVERY", "0.05")
    bar = progress(range(6), total=6, desc="slow work")
    for i in bar:
        time.sleep(0.06)
        for _ in range(50):
            bar.set_postfix(loss=i)  # a training loop's per-step postfix must not add lines
    lines = _lines(capsys.readouterr().err, "slow work")
    assert 4 <= len(lines) <= 8, lines  # one per interval, not one redrawn line
    assert "\r" not in "".join(lines)
    assert lines[-1].startswith("slow work: 100%") and "6/6" in lines[-1] and "loss=5" in lines[-1]
    assert any("<" in ln and ("it/s" in ln or "s/it" in ln) for ln in lines)  # elapsed<ETA, rate


def test_lines_when_not_a_terminal_and_forced_modes(monkeypatch, capsys):
    monkeypatch.delenv("WDB_PROGRESS", raising=False)
    assert mode() == "lines"  # pytest's stderr is captured, not a TTY
    for _ in progress(range(3), desc="logged work"):
        pass
    assert "logged work" in capsys.readouterr().err  # a log file is never silent
    monkeypatch.setenv("WDB_PROGRESS", "1")
    assert mode() == "bar"
    monkeypatch.setenv("WDB_PROGRESS", "0")
    assert mode() == "off"


def test_a_generator_fit_and_its_sampler_report_progress(monkeypatch, capsys):
    from generators import hyperdiffusion as hd
    from tests.test_hyperdiffusion import fit_sample, synthetic

    monkeypatch.setenv("WDB_PROGRESS", "lines")
    monkeypatch.setenv("WDB_PROGRESS_EVERY", "0")
    fit_sample(synthetic(), n=2)
    err = capsys.readouterr().err
    fit, sample = _lines(err, "fit hyperdiffusion"), _lines(err, "sample hyperdiffusion")
    assert fit and sample, err
    assert "6/6" in fit[-1] and "10/10" in sample[-1]
    assert hd.NAME == "hyperdiffusion"
