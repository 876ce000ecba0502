import subprocess
import sys

from rnnkit.cli import main


def test_explain_prints_formula_equations_shapes_and_gates(capsys):
    assert main(["explain", "lstm", "--input-size", "6", "--hidden-size", "16"]) == 0
    out = capsys.readouterr().out
    assert "4 × (6 + 16 + 1) × 16 = 1472" in out  # keras first
    assert "4 × (6 + 16 + 2) × 16 = 1536" in out  # torch too
    assert "f_t = σ(W_if x_t" in out
    assert "weight_hh  (64, 16)" in out
    for gate in ("input", "forget", "cell", "output"):
        assert f"\n  {gate} " in out


def test_explain_gru_reset_before(capsys):
    assert main(["explain", "gru", "--input-size", "3", "--hidden-size", "4",
                 "--reset-before", "--convention", "torch"]) == 0
    out = capsys.readouterr().out
    assert "3 × (3 + 4 + 1) × 4 = 96" in out
    assert "W_hn (r_t ⊙ h_{t-1})" in out


def test_console_script_entry_point():
    r = subprocess.run([sys.executable, "-m", "rnnkit.cli", "explain", "rnn"],
                       capture_output=True, text=True, check=True)
    assert "(6 + 16 + 1) × 16 = 368" in r.stdout
