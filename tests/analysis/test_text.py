"""The shared text writers of the analysis: the padded Markdown table and the one CSV writer."""
import csv
import io

import numpy as np
import pytest

from scaling_grid.analysis.csvfile import csv_cell, csv_text, write_csv
from scaling_grid.analysis.formatting import markdown_table
from scaling_grid.analysis.loading import load_table


def _by_hand(head, body):
    """The table as grid/cli.py's prediction output and tables.heldout_lines rendered it by hand."""
    widths = [max(len(str(c)) for c in col) for col in zip(head, *body)]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(head, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    return lines + ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in body]


@pytest.mark.parametrize("body", [[], [["64", "a", "3.1 [3.0, 3.2]"]],
                                  [["6400", "variant-long", "1"], ["1", "b", "12.5% (yes)"]]])
def test_markdown_table_is_byte_identical_to_the_hand_rendered_one(body):
    head = ["m", "variant", "prediction [95%]"]
    assert markdown_table(body, head) == _by_hand(head, body)


def test_markdown_table_pads_every_column_to_its_widest_cell():
    assert markdown_table([["6400", "b"]], ["m", "variant"]) == [
        "| m    | variant |", "|------|---------|", "| 6400 | b       |"]


def test_one_csv_rule_for_every_cell_and_it_reads_back(tmp_path):
    assert [csv_cell(x) for x in (None, np.nan, np.inf, -np.inf, 0.1, np.float32(0.5), True, np.bool_(False), 3,
                                  "x")] == ["", "", "inf", "-inf", "0.1", "0.5", "true", "false", "3", "x"]
    assert csv_text(["a", "b"], [[1.5, None]], lineterminator="\n") == "a,b\n1.5,\n"
    table = {"cell": np.array(["c1", "c,2"]), "loss": np.array([1.25, np.nan]), "tau": np.array([np.inf, 2.0]),
             "is_final": np.array([True, False])}
    p = write_csv(table, tmp_path / "t.csv")
    assert p.read_bytes() == b'cell,loss,tau,is_final\r\nc1,1.25,inf,true\r\n"c,2",,2.0,false\r\n'
    back = load_table(str(p))
    assert back["cell"].tolist() == ["c1", "c,2"] and np.isnan(back["loss"][1]) and back["tau"][0] == np.inf
    assert back["is_final"].tolist() == [True, False]
    assert list(csv.reader(io.StringIO(p.read_text()))) == [["cell", "loss", "tau", "is_final"],
                                                            ["c1", "1.25", "inf", "true"], ["c,2", "", "2.0", "false"]]
