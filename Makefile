# covidet: two commands for a fresh machine.
#   make demo   set up (first use) and run the whole system on loopback with simulated devices
#               (covidet demo: web worklist, DICOM receiver, MQTT vitals, analysis; Ctrl-C stops it)
#   make test   set up (first use) and run the whole test suite
# Both first install the Debian packages they need when missing (scripts/system-packages.sh: as root, or
# through sudo), then the Python environment (.venv).
#   make predict-demo   assess a few real chest X-rays from the command line (no servers)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
COVIDET_DATA ?= $(abspath ../shared/data/cxr)
export COVIDET_DATA

PORT ?= 8000

.PHONY: setup viewer demo predict-demo test bench lint fuzz system-packages-test system-packages-demo

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

# The diagnostic viewer's JavaScript (Cornerstone3D, pinned in package-lock.json), bundled into
# src/covidet/web/static/viewer/ (not committed); rebuilt when missing or older than its sources.
VIEWER_SRC := src/covidet/web/viewer_src
VIEWER_BUNDLE := src/covidet/web/static/viewer/viewer3d.js
$(VIEWER_BUNDLE): $(VIEWER_SRC)/package.json $(VIEWER_SRC)/package-lock.json $(VIEWER_SRC)/build.mjs $(wildcard $(VIEWER_SRC)/src/*.js)
	@command -v npm >/dev/null || { echo "covidet: 'make viewer' needs Node.js 20+ and npm (Debian: nodejs npm)" >&2; exit 1; }
	cd $(VIEWER_SRC) && npm ci --no-audit --no-fund && npm run build

viewer: $(VIEWER_BUNDLE)

setup: $(VENV)/.installed $(VIEWER_BUNDLE)

system-packages-test:
	@scripts/system-packages.sh test

system-packages-demo:
	@scripts/system-packages.sh demo

demo: system-packages-demo setup
	$(BIN)/covidet demo --port $(PORT)

# The predict demo's X-rays: a real 16-bit MONOCHROME1 DICOM chest radiograph shipped by pydicom-data, plus one
# validation-split image of each class from the dataset when it is present.
predict-demo: setup
	@mkdir -p out/demo
	$(BIN)/python -c "from pydicom.data import get_testdata_file as g; print(g('RG1_UNCR.dcm', download=False))" > out/demo/files.txt
	-@test -f "$(COVIDET_DATA)/manifest.csv" && awk -F, 'NR>1 && $$4=="val" && !seen[$$2]++ {print "$(COVIDET_DATA)/" $$1}' "$(COVIDET_DATA)/manifest.csv" >> out/demo/files.txt
	$(BIN)/covidet predict $$(cat out/demo/files.txt) --draw out/demo | tee out/demo/predictions.json
	@echo "drawn images: out/demo/*.png   (not for clinical use)"

test: system-packages-test setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python benchmarks/detector.py --sizes 384 512 800 --out benchmarks/results/detector.json

# Property-based fuzzing of the MQTT payload parser (tests/ingest/test_mqtt_fuzz.py) and of the image acceptance
# check (tests/imaging/test_validate_fuzz.py): the same properties as
# in `make test`, with FUZZ_MAX_EXAMPLES inputs each instead of 300; failures are kept in out/hypothesis/.
FUZZ_MAX_EXAMPLES ?= 20000
fuzz: setup
	FUZZ_MAX_EXAMPLES=$(FUZZ_MAX_EXAMPLES) $(BIN)/python -m pytest -q -p no:cacheprovider -o timeout=0 \
	  tests/ingest/test_mqtt_fuzz.py tests/imaging/test_validate_fuzz.py

# mypy runs on every package but ingest and detection, which are not type-clean yet (pynetdicom and torch
# typing); tests/test_lint.py runs the same in `make test`.
MYPY_PACKAGES ?= src/covidet/domain.py src/covidet/config.py src/covidet/assessment src/covidet/pacs src/covidet/store src/covidet/reports src/covidet/archive src/covidet/worker src/covidet/web src/covidet/api src/covidet/imaging src/covidet/app src/covidet/cli src/covidet/simulate
lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/lint-imports
	$(BIN)/mypy $(MYPY_PACKAGES)
