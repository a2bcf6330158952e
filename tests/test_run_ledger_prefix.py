"""Issue 17 item 10: a ledger whose temp_dir names a user directory is refused, nothing deleted."""

import json

import pytest

from pipeline.run_ledger import LedgerError, RunLedger


def _ledger(**changes):
    data = json.loads(RunLedger.new("abc123def456", ["dataset_info.json"], local_progress=True).to_json())
    data.update(changes)
    return json.dumps(data)


def test_a_ledger_of_rotnet_s_own_form_is_accepted():
    ledger = RunLedger.from_json(_ledger())
    assert ledger.temp_dir == ".rotnet-tmp-abc123def456"
    assert ledger.progress_dir == ".rotnet-progress-abc123def456"


@pytest.mark.parametrize(
    "changes",
    [
        {"temp_dir": "thesis"},
        {"temp_dir": ".rotnet-tmp-otherrun"},
        {"progress_dir": "photos"},
    ],
)
def test_a_ledger_naming_a_user_directory_is_refused(changes):
    with pytest.raises(LedgerError, match="not of the form"):
        RunLedger.from_json(_ledger(**changes))
