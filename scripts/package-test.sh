#!/usr/bin/env bash
# Builds the spore-relay Debian package and checks it the way an operator would meet it:
# its contents (dpkg-deb -c), the systemd unit (systemd-analyze verify), the alert rules
# (promtool check rules, when Debian's prometheus package installs), then installs it on this
# machine with dpkg -i, runs /usr/bin/spore-relay --version from the installed path, and purges it.
#
# Run as root (dpkg -i). SPORE_PACKAGE_PROFILE=dev packages debug binaries (faster; for trying
# the script out), default release.
set -euo pipefail
cd "$(dirname "$0")/.."

profile="${SPORE_PACKAGE_PROFILE:-release}"
target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
case "$profile" in
dev) bin_dir="$target_dir/debug" ;;
*) bin_dir="$target_dir/$profile" ;;
esac

apt_install() {
    if ! command -v apt-get >/dev/null 2>&1; then
        return 1
    fi
    if [ -z "${apt_updated:-}" ]; then
        apt-get update -qq >/dev/null 2>&1 || true
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null 2>&1
}

echo "== package: tools"
if ! command -v cargo-deb >/dev/null 2>&1; then
    echo "   installing cargo-deb"
    cargo install cargo-deb --locked 2>&1 | tail -n 2
fi
command -v dpkg-deb >/dev/null 2>&1 || apt_install dpkg
command -v systemd-analyze >/dev/null 2>&1 || apt_install systemd || {
    echo "package-test: systemd-analyze is missing and Debian's systemd did not install" >&2
    exit 1
}

echo "== package: build ($profile) spore-relay and spore"
cargo build --locked --profile "$profile" -p spore-relay -p spore-tools --bins 2>&1 | tail -n 1
# cargo-deb reads the binaries from target/release/ (its asset paths); a dev build is copied there.
if [ "$bin_dir" != "$target_dir/release" ]; then
    mkdir -p "$target_dir/release"
    cp "$bin_dir/spore-relay" "$bin_dir/spore" "$target_dir/release/"
fi
deb_dir="$target_dir/debian"
rm -rf "$deb_dir"
cargo deb -p spore-relay --no-build --output "$deb_dir/" >/dev/null
deb=$(ls "$deb_dir"/spore-relay_*.deb)
echo "   $deb"

echo "== package: contents"
contents=$(dpkg-deb -c "$deb")
for path in ./usr/bin/spore-relay ./usr/bin/spore ./etc/spore/relay.toml \
    ./lib/systemd/system/spore-relay.service ./usr/share/doc/spore-relay/README.md \
    ./usr/share/doc/spore-relay/relay-config.md ./usr/share/doc/spore-relay/CHANGELOG.md \
    ./usr/share/doc/spore-relay/examples/alerts.yml \
    ./usr/share/doc/spore-relay/examples/dashboard.json; do
    if ! grep -q " $path\$" <<<"$contents"; then
        echo "package-test: $path is not in the package" >&2
        echo "$contents" >&2
        exit 1
    fi
done
control=$(dpkg-deb -I "$deb")
grep -q '^ Package: spore-relay$' <<<"$control"
conffiles=$(dpkg-deb -e "$deb" "$deb_dir/control" && cat "$deb_dir/control/conffiles")
grep -qx /etc/spore/relay.toml <<<"$conffiles" || {
    echo "package-test: /etc/spore/relay.toml is not a conffile" >&2
    exit 1
}
for script in postinst prerm postrm; do
    [ -x "$deb_dir/control/$script" ] || {
        echo "package-test: maintainer script $script missing" >&2
        exit 1
    }
done
echo "   $(wc -l <<<"$contents") entries, conffiles and maintainer scripts present"

echo "== package: alert rules"
if command -v promtool >/dev/null 2>&1 || apt_install prometheus; then
    promtool check rules relay/deploy/alerts.yml
else
    echo "   SKIPPED: promtool (Debian package prometheus) could not be installed;"
    echo "   the metric names in alerts.yml are still checked by cargo test -p spore-relay"
fi

echo "== package: install"
if dpkg -s spore-relay >/dev/null 2>&1; then

    echo "package-test: spore-relay is already installed on this machine; not touching it" >&2
    exit 1
fi
dpkg -i "$deb"
trap 'dpkg --purge spore-relay >/dev/null 2>&1 || true' EXIT
/usr/bin/spore-relay --version
/usr/bin/spore --version
getent passwd spore >/dev/null
[ "$(stat -c %U /var/lib/spore)" = spore ]
[ "$(stat -c %U:%a /var/lib/spore/relay.key)" = spore:600 ]
[ "$(stat -c %G:%a /etc/spore/relay.toml)" = spore:640 ]
# The installed config validates: descriptor fails only because it has no public_address.
if out=$(/usr/bin/spore-relay descriptor --config /etc/spore/relay.toml 2>&1); then
    echo "package-test: descriptor without public_address should fail" >&2
    exit 1
fi
grep -q public_address <<<"$out"

echo "== package: systemd unit"
# verify needs ExecStart's binary installed, so it runs after dpkg -i.
# Any remark about the unit (unknown key, bad value) fails the test.
verify=$(systemd-analyze verify /lib/systemd/system/spore-relay.service 2>&1) || {
    echo "$verify" >&2
    exit 1
}
if grep -q spore-relay.service <<<"$verify"; then
    echo "$verify" >&2
    exit 1
fi
echo "   systemd-analyze verify: clean"

echo "== package: remove"
dpkg --purge spore-relay
trap - EXIT
[ ! -e /usr/bin/spore-relay ] && [ ! -e /var/lib/spore ] && [ ! -e /etc/spore/relay.toml ]
echo "package-test: ok"
