# kube-ec2 developer commands. `make preview` and `make test` are the README quick start.
VENV := .venv
PY := $(VENV)/bin/python
STACK ?= dev
# Validators and the real etcd the tests run (Debian packages).
APT_PACKAGES := cloud-init shellcheck etcd-server etcd-client iproute2 openssl systemd util-linux curl dnsmasq-base nftables

.PHONY: setup tools preview test golden bench mutate

setup: tools $(VENV)/.installed

tools:
	@missing=""; for t in cloud-init shellcheck etcd etcdctl ip openssl systemd-analyze unshare curl dnsmasq nft; do \
	  command -v $$t >/dev/null || missing="$$missing $$t"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages for:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(APT_PACKAGES) >/dev/null; \
	fi

$(VENV)/.installed: requirements.txt requirements-dev.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q -r requirements-dev.txt
	touch $@

# Offline preview of a stack: what `pulumi up` would build and run, written to preview/$(STACK)/.
# Needs only Python: the validators are for the tests.
preview: $(VENV)/.installed
	$(PY) -m components.offline.preview --stack $(STACK)

# Every test: mocks, real validators, the real etcd, goldens; then ruff.
test: setup
	$(PY) -m pytest
	$(VENV)/bin/ruff check .

# Regenerate golden files after an intended change; review the diff.
golden: setup
	UPDATE_GOLDEN=1 $(PY) -m pytest tests/test_render.py tests/test_preview.py

bench: setup
	$(PY) bench/benchmark.py

# The real-cloud proof on AWS (README "End-to-end on AWS"): needs credentials and the Pulumi CLI,
# refuses at once without them (before building anything), costs money. Never part of `make test`.
# Options: make e2e E2E_ARGS="--region eu-west-1 --minions 3" (see python -m e2e.run --help).
.PHONY: e2e
e2e:
	python3 -m e2e.preflight
	$(MAKE) $(VENV)/.installed
	$(PY) -m e2e.run $(E2E_ARGS)

# Mutation score (not part of CI; about 40 minutes on 2 cores): each catalogued bug in a scratch copy,
# goldens regenerated, whole suite. Writes docs/mutation-report.md.
mutate: setup
	$(PY) tools/mutate.py --report docs/mutation-report.md
