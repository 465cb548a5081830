# mxd — the two commands: `make run` (a local instance) and `make test` (the whole suite).
# Both set up what they need: a Python venv, and (as root on Debian) the packages that the
# integration tests drive.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

# Debian packages of the real clients and servers the integration tests run.
DEB_PACKAGES := gsasl cyrus-clients swaks libnet-ssleay-perl libauthen-sasl-perl postfix \
	unbound nsd ldnsutils bind9-dnsutils gnutls-bin slapd ldap-utils microsocks \
	dante-server opendkim opendkim-tools spfquery dovecot-imapd dovecot-ldap isync pebble certbot msmtp \
	chromium chromium-driver postgresql

.PHONY: run test test-deps venv lint typecheck unit integration bench config-reference clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]' --config-settings editable_mode=compat
	$(BIN)/python -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(BIN)/mxd localserve

# Installs missing Debian packages when run as root; elsewhere it only reports them.
test-deps:
	@missing=""; for p in $(DEB_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -z "$$missing" ]; then echo "test-deps: all Debian packages present"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "test-deps: installing$$missing"; \
	  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	else echo "test-deps: missing$$missing (integration tests that need them will be skipped, or fail under CI=true)"; fi

lint: $(STAMP)
	$(BIN)/ruff check mxd tests bench twisted

typecheck: $(STAMP)
	$(BIN)/mypy

test: $(STAMP) test-deps lint typecheck
	$(BIN)/python -m pytest -q

unit: $(STAMP)
	$(BIN)/python -m pytest -q -m "not integration"

integration: $(STAMP) test-deps
	$(BIN)/python -m pytest -q -m integration

config-reference: $(STAMP)
	$(BIN)/mxd config reference > doc/config.md

clean:
	rm -rf $(VENV) build dist *.egg-info localserve
