# dtlsvpn: `make test` and `make demo` work on a fresh Debian 12 machine as root; each
# installs what it needs (Debian packages once, then a virtualenv in .venv).
#
#   make deps    Debian packages: peers (openssl, gnutls-bin, tshark), build deps of
#                systemd-python, network tools for the namespace tests
#   make venv    .venv with `pip install -e .[test,dev]` (redone when pyproject.toml changes)
#   make lint    ruff (complexity ≤ 12) over dtlsvpn/, tests/ and bench/; mypy strict over every package
#   make test    deps + venv + lint, then the whole pytest suite (exit status is pytest's)
#   make demo    a real tunnel between two network namespaces: two daemons, ping, a file
#                copied with matching SHA-256, path MTU, status (tools/demo.sh; root)
#   make bench   dtlsvpn against OpenVPN, wireguard-go, ocserv and the bare link (bench/README.md)
#   make clean   remove .venv and caches

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.ONESHELL:
.DEFAULT_GOAL := help
MAKEFLAGS += --no-builtin-rules
export PATH := $(PATH):/usr/local/sbin:/usr/sbin:/sbin

PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
APT_STAMP := $(VENV)/.apt-stamp
VENV_STAMP := $(VENV)/.install-stamp

# Debian packages, and programs whose presence shows they are installed.
APT_PACKAGES := openssl gnutls-bin libgnutls30 tshark libsystemd-dev pkg-config gcc libssl-dev \
	iproute2 nftables procps psmisc util-linux man-db iperf3 iputils-ping
APT_PROGRAMS := iperf3 openssl gnutls-serv gnutls-cli tshark pkg-config gcc ip ss nft ps killall \
	unshare nsenter timeout man ping

.PHONY: help deps venv lint test demo bench clean

help:
	@sed -n 's/^#   //p' $(firstword $(MAKEFILE_LIST))

deps:
	@missing=()
	for prog in $(APT_PROGRAMS); do command -v "$$prog" >/dev/null || missing+=("$$prog"); done
	pkg-config --exists libsystemd 2>/dev/null || missing+=(libsystemd.pc)
	[[ -e /usr/include/openssl/evp.h ]] || missing+=(openssl/evp.h)  # the compiled lane
	# (not `ldconfig -p | grep -q`: under pipefail grep's early exit kills ldconfig with
	# SIGPIPE now and then, and the library looked missing)
	[[ $$(ldconfig -p 2>/dev/null) == *libgnutls.so.30* ]] || missing+=(libgnutls.so.30)
	# The interpreter that builds .venv: Debian's python3 needs python3-venv (ensurepip)
	# and python3-dev (Python.h, for systemd-python); a pyenv build already has both.
	extra=()
	if ! command -v $(PYTHON) >/dev/null; then
		extra+=(python3 python3-venv python3-dev); missing+=($(PYTHON))
	else
		$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || { extra+=(python3-venv); missing+=(ensurepip); }
		$(PYTHON) -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
			|| { extra+=(python3-dev); missing+=(Python.h); }
	fi
	if [[ -f $(APT_STAMP) && $${#missing[@]} -eq 0 ]]; then
		echo "deps: Debian packages already installed"
		exit 0
	fi
	echo "deps: installing Debian packages (missing: $${missing[*]:-none; no stamp yet})"
	sudo=""
	if [[ $$(id -u) -ne 0 ]]; then
		command -v sudo >/dev/null || { echo "deps: run as root (or install sudo)" >&2; exit 1; }
		sudo=sudo
	fi
	export DEBIAN_FRONTEND=noninteractive
	echo "wireshark-common wireshark-common/install-setuid boolean false" | $$sudo debconf-set-selections
	$$sudo apt-get update
	$$sudo apt-get install -y --no-install-recommends $(APT_PACKAGES) "$${extra[@]}"
	mkdir -p $(VENV)
	touch $(APT_STAMP)

venv: $(VENV_STAMP)

$(VENV_STAMP): pyproject.toml | deps
	@[[ -x $(VPY) ]] || { echo "venv: creating $(VENV)"; $(PYTHON) -m venv $(VENV); }
	echo "venv: pip install -e .[test,dev]"
	$(VPY) -m pip install --quiet --disable-pip-version-check -e '.[test,dev]'
	touch $@

lint: venv
	@rc=0
	echo "lint: ruff check dtlsvpn tests bench"
	$(VENV)/bin/ruff check dtlsvpn tests bench || rc=1
	echo "lint: mypy (strict) dtlsvpn"
	$(VENV)/bin/mypy dtlsvpn || rc=1
	exit $$rc

test: deps venv lint
	$(VPY) -m pytest -q -p no:cacheprovider tests/

demo: venv
	bash tools/demo.sh

# The bench's Python extra (matplotlib) goes into the same .venv; the peers' Debian packages
# (openvpn, wireguard-go, wireguard-tools, ocserv, openconnect, iperf3) are installed by the
# bench itself when missing.  Knobs: BENCH_ROUNDS, BENCH_SECONDS, BENCH_SYSTEMS,
# BENCH_IDLE_PEERS (see bench/README.md).
BENCH_STAMP := $(VENV)/.bench-stamp

$(BENCH_STAMP): $(VENV_STAMP)
	@echo "bench: pip install -e .[bench]"
	$(VPY) -m pip install --quiet --disable-pip-version-check -e '.[bench]'
	touch $@

bench: venv $(BENCH_STAMP)
	$(VPY) -m bench

clean:
	rm -rf $(VENV) build dist ./*.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
	find . -path ./.git -prune -o -type d -name __pycache__ -prune -exec rm -rf {} +

# --- install / uninstall (systemd/dtlsvpn@.service; README "Installing and running under
# systemd") --------------------------------------------------------------------------------
#   make install    (root) virtualenv /opt/dtlsvpn with the package, /usr/local/bin/dtlsvpn,
#                   then what install-data installs; DESTDIR=DIR stages it all under DIR
#   make install-data  the unit in /etc/systemd/system (an edited one is kept: the new one
#                   goes beside it as dtlsvpn@.service.new), man pages dtlsvpn(8) and
#                   dtlsvpn.conf(5), bash completion, examples and README in
#                   /usr/share/doc/dtlsvpn; honours DESTDIR
#   make uninstall  remove what install put there (keeps /etc/dtlsvpn and /var/lib/dtlsvpn)
#
# Debian's own interpreter (not a pyenv one under /root or /home: the unit's ProtectHome=
# would hide it), in a virtualenv so pip never touches the system's site-packages.  The
# unit runs /usr/local/bin/dtlsvpn, which is also where `pip install .` as root puts the
# script; another BINDIR is written into the installed unit's ExecStart.
INSTALL_PYTHON ?= /usr/bin/python3
INSTALL_VENV ?= /opt/dtlsvpn
BINDIR ?= /usr/local/bin
UNITDIR ?= /etc/systemd/system
DOCDIR ?= /usr/share/doc/dtlsvpn
CONFDIR ?= /etc/dtlsvpn
MANDIR ?= /usr/local/share/man
BASHCOMPDIR ?= /usr/share/bash-completion/completions
DESTDIR ?=
INSTALL_APT := python3 python3-venv python3-dev libsystemd-dev pkg-config gcc

.PHONY: install install-data uninstall

# The unit as installed last time is kept in DOCDIR: a unit that differs from it was edited
# by the admin and is not overwritten (better: keep changes in `systemctl edit` drop-ins).
install-data:
	@d='$(DESTDIR)'
	install -d -m 0755 "$$d$(UNITDIR)" "$$d$(DOCDIR)/examples" "$$d$(MANDIR)/man8" \
		"$$d$(MANDIR)/man5" "$$d$(BASHCOMPDIR)" "$$d$(CONFDIR)"
	unit="$$d$(UNITDIR)/dtlsvpn@.service"
	shipped="$$d$(DOCDIR)/dtlsvpn@.service"  # the unit as installed last time
	sed 's|^ExecStart=/usr/local/bin/dtlsvpn |ExecStart=$(BINDIR)/dtlsvpn |' systemd/dtlsvpn@.service \
		> "$$shipped.tmp"
	chmod 0644 "$$shipped.tmp"
	if [[ -f $$unit ]] && ! cmp -s "$$unit" "$$shipped.tmp" \
			&& ! { [[ -f $$shipped ]] && cmp -s "$$unit" "$$shipped"; }; then
		cp -f "$$shipped.tmp" "$$unit.new"
		echo "install: $(UNITDIR)/dtlsvpn@.service was edited: kept; the new unit is" \
			"dtlsvpn@.service.new (put local changes in 'systemctl edit dtlsvpn@NAME')"
	else
		cp -f "$$shipped.tmp" "$$unit.tmp"
		mv -f "$$unit.tmp" "$$unit"
		rm -f "$$unit.new"
	fi
	mv -f "$$shipped.tmp" "$$shipped"
	install -m 0644 man/dtlsvpn.8 "$$d$(MANDIR)/man8/dtlsvpn.8"
	install -m 0644 man/dtlsvpn.conf.5 "$$d$(MANDIR)/man5/dtlsvpn.conf.5"
	install -m 0644 completion/dtlsvpn.bash "$$d$(BASHCOMPDIR)/dtlsvpn"
	install -m 0644 etc/dtlsvpn/*.conf "$$d$(DOCDIR)/examples/"
	install -m 0644 README.md schema/status.schema.json "$$d$(DOCDIR)/"

install:
	@missing=()
	[[ -x $(INSTALL_PYTHON) ]] && $(INSTALL_PYTHON) -c 'import ensurepip, venv' 2>/dev/null \
		|| missing+=(python3-venv)
	[[ -x $(INSTALL_PYTHON) ]] && $(INSTALL_PYTHON) -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' 2>/dev/null \
		|| missing+=(python3-dev)
	pkg-config --exists libsystemd 2>/dev/null || missing+=(libsystemd-dev)
	command -v gcc >/dev/null || missing+=(gcc)
	if [[ $${#missing[@]} -gt 0 ]]; then
		echo "install: installing Debian packages to build the virtualenv (missing: $${missing[*]})"
		export DEBIAN_FRONTEND=noninteractive
		apt-get update
		apt-get install -y --no-install-recommends $(INSTALL_APT)
	fi
	$(INSTALL_PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
		|| { echo "install: $(INSTALL_PYTHON) is older than 3.11" >&2; exit 1; }
	venv='$(DESTDIR)$(INSTALL_VENV)'
	[[ -x $$venv/bin/python ]] || $(INSTALL_PYTHON) -m venv "$$venv"
	echo "install: pip install . into $$venv"
	"$$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade .
	if [[ -n '$(DESTDIR)' ]]; then
		# Staged: the scripts' #! lines and pyvenv.cfg name the final place, not DESTDIR.
		grep -rlI -- "$$venv" "$$venv/bin" "$$venv/pyvenv.cfg" \
			| xargs -r sed -i "s|$$venv|$(INSTALL_VENV)|g"
	fi
	install -d -m 0755 '$(DESTDIR)$(BINDIR)'
	ln -sfn $(INSTALL_VENV)/bin/dtlsvpn '$(DESTDIR)$(BINDIR)/dtlsvpn'
	$(MAKE) --no-print-directory install-data
	if [[ -z '$(DESTDIR)' && -d /run/systemd/system ]]; then systemctl daemon-reload; fi
	echo "install: done. Next: copy an example from $(DOCDIR)/examples to $(CONFDIR)/NAME.conf,"
	echo "         dtlsvpn check-config NAME && systemctl enable --now dtlsvpn@NAME"

uninstall:
	@if [[ -d /run/systemd/system ]]; then
		running=$$(systemctl list-units --plain --no-legend --state=active 'dtlsvpn@*' | awk '{print $$1}')
		if [[ -n $$running ]]; then
			echo "uninstall: stop these first: $$running" >&2; exit 1
		fi
	fi
	rm -f $(UNITDIR)/dtlsvpn@.service $(UNITDIR)/dtlsvpn@.service.new
	rm -f $(MANDIR)/man8/dtlsvpn.8 $(MANDIR)/man5/dtlsvpn.conf.5 $(BASHCOMPDIR)/dtlsvpn
	if [[ -L $(BINDIR)/dtlsvpn && $$(readlink $(BINDIR)/dtlsvpn) == $(INSTALL_VENV)/bin/dtlsvpn ]]; then
		rm -f $(BINDIR)/dtlsvpn
	fi
	rm -rf $(INSTALL_VENV) $(DOCDIR)
	if [[ -d /run/systemd/system ]]; then systemctl daemon-reload; fi
	echo "uninstall: done; $(CONFDIR) (configurations, keys) and /var/lib/dtlsvpn (tickets) are kept"

# --- make fuzz (security battery, README "Security") --------------------------------------
# The mutation fuzzer of tests/fuzz at volume: FUZZ_DATAGRAMS datagrams per role (default
# 10^6) at a server endpoint and at a client, a progress line every 50 000, then per role
# the rate, the exceptions that escaped the core (exit status 1 unless 0) and the drops by
# reason; the figures also go to fuzz-report.json.  FUZZ_SEED picks the run.
FUZZ_DATAGRAMS ?= 1000000
FUZZ_SEED ?= 0
.PHONY: fuzz
fuzz: venv
	$(VPY) -m tests.fuzz.run --datagrams $(FUZZ_DATAGRAMS) --seed $(FUZZ_SEED) \
		--report fuzz-report.json
# Optional: coverage-guided fuzzing with atheris (pip install into .venv on first use;
# skipped with a message when it does not install).  ATHERIS_RUNS inputs, mixed targets.
ATHERIS_RUNS ?= 20000
.PHONY: fuzz-atheris
fuzz-atheris: venv
	@if ! $(VPY) -c 'import atheris' 2>/dev/null; then
		$(VENV)/bin/pip install --quiet atheris || { echo "fuzz-atheris: atheris does not install here; skipped"; exit 0; }
	fi
	$(VPY) -m tests.fuzz.atheris_target -atheris_runs=$(ATHERIS_RUNS) -print_final_stats=1
