# wildboar: the two commands a newcomer needs are `make run` and `make test`.
# Both set up what they need first (Debian packages when root, then .venv).

# Debian's interpreter when there is one: workers run as an unprivileged user, who must be
# able to execute the virtual environment's python (a pyenv build under /root is not).
PYTHON ?= $(shell test -x /usr/bin/python3 && echo /usr/bin/python3 || echo python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml packaging/debian12.txt | cksum | cut -d' ' -f1)
# Worker processes for pytest-xdist: one per CPU.
JOBS   ?= auto
TYPED  := wildboar $(wildcard supervisor)

.PHONY: run test setup lint typecheck unit coverage fuzz fuzz-smtp fuzz-proxy fuzz-merge fuzz-seeds \
	bench-core bench deb test-system clean

run: $(STAMP)
	sh scripts/run

test: $(STAMP) lint typecheck unit coverage

setup: $(STAMP)

$(STAMP): pyproject.toml packaging/debian12.txt scripts/system-deps
	PYTHON=$(PYTHON) sh scripts/system-deps
	test -x $(BIN)/python && $(BIN)/python -c 'import sys; sys.exit(sys.base_prefix != "$(shell $(PYTHON) -c "import sys; print(sys.base_prefix)")")' \
		|| { rm -rf $(VENV) && $(PYTHON) -m venv $(VENV); }
	$(BIN)/python -m pip install -q --upgrade pip
	# The runtime libraries at Debian 12's versions (packaging/debian12.txt): the package's.
	$(BIN)/python -m pip install -q -c packaging/debian12.txt -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $@

lint: $(STAMP)
	$(BIN)/ruff check wildboar tests bench packaging/bundle $(wildcard supervisor)
	$(BIN)/ruff format --check wildboar tests bench packaging/bundle $(wildcard supervisor)

typecheck: $(STAMP)
	$(BIN)/mypy --strict $(TYPED)

# Coverage data (pyproject.toml [tool.coverage.run]): one file per process, in COVDATA.
# The servers the tests start (wildboar serve, supervisor, workers) are measured too;
# workers and supervisors run as nobody when the tests run as root, hence mode 1777.
# pytest-cov combines the files there when it finishes; one written later is combined after.
COVDATA := .coverage.d

unit: $(STAMP)
	sh scripts/test-access
	sh scripts/test-services
	rm -rf .coverage .coverage.* $(COVDATA)
	mkdir -m 1777 $(COVDATA)
	$(BIN)/python -m pytest -n $(JOBS) -p no:cacheprovider --ignore=tests/package \
		--cov=wildboar --cov=supervisor --cov-branch --cov-report= tests
	if ls $(COVDATA)/.coverage.* >/dev/null 2>&1; then \
		$(BIN)/python -m coverage combine --append -q; fi

# wildboar.smtp is covered through its public API only (tests/smtp uses nothing private).
coverage: unit
	$(BIN)/python -m coverage report --include='wildboar/smtp/*' --fail-under=95
	$(BIN)/python -m coverage report

# Coverage-guided fuzzing (docs/fuzzing.md): FUZZ_SECONDS per target, the two targets side
# by side under `make -j2 fuzz`. New inputs go to .fuzz/TARGET, crashes to .fuzz/crash-*;
# `make fuzz-merge` adds to tests/corpus the few that reach a new edge (-merge=1; with
# -use_counters=0 a mere new hit count does not count, which keeps the corpus small).
# `make test` runs each target for FUZZ_CI_SECONDS (20) from the corpus (tests/fuzz).
FUZZ_SECONDS ?= 600
FUZZ_TARGETS := smtp proxy

fuzz: $(addprefix fuzz-,$(FUZZ_TARGETS))

$(addprefix fuzz-,$(FUZZ_TARGETS)): fuzz-%: $(STAMP)
	mkdir -p .fuzz/$*
	$(BIN)/python -m tests.fuzz $* -max_total_time=$(FUZZ_SECONDS) -artifact_prefix=.fuzz/ \
		.fuzz/$* tests/corpus/$*

fuzz-merge: $(STAMP)
	for target in $(FUZZ_TARGETS); do \
		$(BIN)/python -m tests.fuzz $$target -merge=1 -use_counters=0 \
			tests/corpus/$$target .fuzz/$$target \
			|| exit 1; done

# The seed corpus, regenerated from the transcripts of tests/smtp and tests/test_proxy.py.
fuzz-seeds: $(STAMP)
	$(BIN)/python -m tests.fuzz.seeds

bench-core: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[bench]'
	$(BIN)/python -m bench.core

# Whole servers over loopback under Postfix's smtp-source, then what STARTTLS costs
# (beside a private Postfix's smtpd), then end to end into RabbitMQ, then through the
# consumer pipeline (scam, spf, deliver) beside the handoff alone, then into a private
# Dovecot's Maildir over LMTP (beside a private Postfix); see docs/performance.md.
bench: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[bench]'
	sh scripts/test-services
	$(BIN)/python -m bench.server
	$(BIN)/python -m bench.tls
	$(BIN)/python -m bench.amqp
	$(BIN)/python -m bench.pipeline
	$(BIN)/python -m bench.lmtp

# The Debian package, in dist/ (docs/packaging.md); as root it installs what it needs.
deb:
	sh packaging/build-deb

# The package under a real systemd (tests/package): builds it, boots a Debian 12 container
# with systemd-nspawn (its tree made once, kept in /var/cache/wildboar-test), and goes
# through install, serving, reload, upgrade under load, stop, purge. Needs root.
test-system: $(STAMP)
	$(BIN)/python -m pytest -p no:cacheprovider -v tests/package

clean:
	rm -rf $(VENV) .coverage .coverage.* .mypy_cache .ruff_cache .hypothesis .fuzz build *.egg-info
