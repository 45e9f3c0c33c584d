# Shared by the fetch scripts (sourced, not run): sha256 checks. Set FETCH_TAG for messages.

sha_ok() { [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]; }

# Check a downloaded file; on a mismatch delete it and fail loudly.
verify() { # file sha
  local got
  got=$(sha256sum "$1" | cut -d' ' -f1)
  if [ "$got" != "$2" ]; then
    rm -f "$1"
    echo "${FETCH_TAG:-fetch}: sha256 mismatch for $1" >&2
    echo "  expected $2" >&2
    echo "  got      $got (file deleted)" >&2
    exit 1
  fi
}
