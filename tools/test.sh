#!/usr/bin/env bash
# Run every test of the book, as CI does (.ci/run calls this script):
#   setup -> tangle check -> unit tests -> nbval over every chapter, in the environment a
#   reader's Binder session has -> the chapters that train on CIFAR-10, on another copy of
#   the data -> strict HTML build -> browser test and PDF edition (tests marked `browser`).
# Each stage prints its wall time; the last line sums up the test counts.
set -uo pipefail
cd "$(dirname "$0")/.."
export CNNBOOK_REQUIRE_ALL=1  # tests that would skip for a missing tool fail instead
export PYTHONDONTWRITEBYTECODE=1
RESULTS=_build/test-results  # junit XML of each pytest stage, summed up at the end
mkdir -p $RESULTS
rm -f $RESULTS/*.xml
declare -a SUMMARY=()
FAILED=0

stage() {  # stage NAME COMMAND...
  local name=$1; shift
  local start=$SECONDS
  echo "=== stage: $name"
  "$@"
  local rc=$?
  local took=$((SECONDS - start))
  if [ $rc -eq 0 ]; then SUMMARY+=("$name: ok (${took} s)"); else SUMMARY+=("$name: FAILED rc=$rc (${took} s)"); FAILED=1; fi
  echo "=== stage: $name finished in ${took} s (rc=$rc)"
  return $rc
}

stage setup bash tools/setup.sh || { echo "setup failed; stopping"; exit 1; }
PY=.venv/bin/python
stage tangle-check $PY tools/tangle.py --check
stage unit-tests $PY -m pytest tests -m "not browser and not chapters" -q --junitxml=$RESULTS/unit.xml
# Every chapter runs once here, in a fresh environment built from binder/requirements.txt with
# the package installed by binder/postBuild (--binder-env; see tests/test_binder.py).
stage nbval $PY -m pytest book -q --binder-env _build/binder-env --junitxml=$RESULTS/nbval.xml
# The tests that execute chapters again (tests/test_other_copy.py: another copy of CIFAR-10).
stage other-copy $PY -m pytest tests -m chapters -q --junitxml=$RESULTS/other-copy.xml
if stage book-build .venv/bin/jupyter-book build . -W -n --keep-going -q; then
  stage browser $PY -m pytest tests -m browser -q --junitxml=$RESULTS/browser.xml
else
  SUMMARY+=("browser: not run (no book)"); FAILED=1
fi

echo
echo "=== summary"
printf '  %s\n' "${SUMMARY[@]}"
$PY - <<'PY'
import glob, xml.etree.ElementTree as ET
passed = failed = skipped = 0
for f in glob.glob("_build/test-results/*.xml"):
    for suite in ET.parse(f).getroot().iter("testsuite"):
        t, fl, er, sk = (int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped"))
        passed += t - fl - er - sk; failed += fl + er; skipped += sk
print(f"tests: {passed} passed, {failed} failed, {skipped} skipped")
PY
exit $FAILED
