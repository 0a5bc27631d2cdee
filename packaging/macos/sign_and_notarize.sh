#!/usr/bin/env bash
# Sign RemoteLLM.app for distribution (Developer ID, hardened runtime), have Apple notarize
# it, staple the ticket and zip the result. Runs on a Mac with Xcode's command line tools;
# see docs/install.md. Usage problems exit with 2, failed steps with 1.
set -euo pipefail

PROG=$(basename "$0")
HERE=$(cd "$(dirname "$0")" && pwd)
ENTITLEMENTS="$HERE/entitlements.plist"
IDENTITY=""
PROFILE=""
OUTPUT=""
APP=""

usage() {
    cat <<EOF
Usage: $PROG --identity IDENTITY --keychain-profile PROFILE [--entitlements FILE]
       [--output ZIP] APP

Sign APP (for example dist/RemoteLLM.app) inside out with the hardened runtime, verify it,
submit it to Apple's notary service, staple the ticket and write the zip to hand out.

  --identity IDENTITY        the signing identity, for example
                             "Developer ID Application: Jane Doe (TEAMID1234)"
                             (\`security find-identity -v -p codesigning\` lists them)
  --keychain-profile PROFILE the notarytool credentials saved once with
                             \`xcrun notarytool store-credentials PROFILE\`
  --entitlements FILE        the app's entitlements (default: $ENTITLEMENTS)
  --output ZIP               the zip to write (default: beside APP,
                             remotellm-connector-<version>-macos-<arch>.zip)
  -h, --help                 show this help
EOF
}

usage_error() {
    echo "$PROG: $1" >&2
    echo "Run '$PROG --help' for the usage." >&2
    exit 2
}

fail() {
    echo "$PROG: $1" >&2
    exit 1
}

parse_args() {
    while (($#)); do
        case "$1" in
            -h | --help)
                usage
                exit 0
                ;;
            --identity | --keychain-profile | --entitlements | --output)
                (($# >= 2)) || usage_error "$1 needs a value."
                case "$1" in
                    --identity) IDENTITY=$2 ;;
                    --keychain-profile) PROFILE=$2 ;;
                    --entitlements) ENTITLEMENTS=$2 ;;
                    --output) OUTPUT=$2 ;;
                esac
                shift 2
                ;;
            -*) usage_error "unknown option $1." ;;
            *)
                [[ -z $APP ]] || usage_error "one APP only, got '$APP' and '$1'."
                APP=${1%/}
                shift
                ;;
        esac
    done
    [[ -n $APP ]] || usage_error "missing APP, the .app bundle to sign."
    [[ -n $IDENTITY ]] || usage_error "missing --identity, the signing identity."
    [[ -n $PROFILE ]] || usage_error "missing --keychain-profile, the notarytool profile."
    [[ $APP == *.app && -f $APP/Contents/Info.plist ]] ||
        usage_error "$APP is not an app bundle (a *.app folder with Contents/Info.plist)."
    [[ -f $ENTITLEMENTS ]] || usage_error "entitlements file $ENTITLEMENTS does not exist."
}

require_tools() {
    local tool
    for tool in codesign xcrun ditto spctl lipo file /usr/libexec/PlistBuddy; do
        command -v "$tool" >/dev/null 2>&1 ||
            fail "$tool not found: signing needs macOS with Xcode's command line tools."
    done
}

plist_value() { /usr/libexec/PlistBuddy -c "Print :$1" "$APP/Contents/Info.plist"; }

# Apple's guidance is to sign each piece of nested code from the inside out rather than
# with `codesign --deep`, which gives every piece the same options and entitlements and
# misses code outside the places it searches. Entitlements go on the main executable only:
# libraries inherit them, and entitlements on a library can stop it from loading.
sign() { codesign --force --timestamp --options runtime --sign "$IDENTITY" "$@"; }

sign_nested_code() {
    local main path
    main="$APP/Contents/MacOS/$(plist_value CFBundleExecutable)"
    # Loose Mach-O files (.so, .dylib, the Python library): everything outside frameworks.
    while IFS= read -r -d '' path; do
        if [[ $path != "$main" && $(file -b "$path") == Mach-O* ]]; then
            sign "$path"
        fi
    done < <(find "$APP/Contents" -type f ! -path '*.framework/*' -print0)
    # Framework bundles (Qt's), deepest first, so an enclosing bundle seals signed code.
    while IFS= read -r path; do
        sign "$path"
    done < <(find "$APP/Contents" -type d -name '*.framework' |
        awk -F/ '{ print NF "\t" $0 }' | sort -rn | cut -f2-)
}

sign_app() {
    echo "signing $APP as $IDENTITY"
    sign_nested_code
    sign --entitlements "$ENTITLEMENTS" "$APP"
    codesign --verify --deep --strict --verbose=2 "$APP"
}

notarize() {
    local zip="$1" result="$2" status id
    ditto -c -k --keepParent "$APP" "$zip"
    echo "submitting to the notary service (this waits for the verdict)"
    xcrun notarytool submit "$zip" --keychain-profile "$PROFILE" --wait \
        --output-format plist >"$result"
    status=$(/usr/libexec/PlistBuddy -c "Print :status" "$result")
    id=$(/usr/libexec/PlistBuddy -c "Print :id" "$result")
    if [[ $status != Accepted ]]; then
        xcrun notarytool log "$id" --keychain-profile "$PROFILE" >&2 || true
        fail "notarization ended with status '$status' (submission $id); the log above says why."
    fi
}

staple_and_assess() {
    xcrun stapler staple "$APP"
    xcrun stapler validate "$APP"
    # Gatekeeper's verdict; before notarization it rejects a Developer ID app as unnotarized.
    spctl --assess --type execute --verbose=2 "$APP"
}

default_output() {
    local version arch
    version=$(plist_value CFBundleShortVersionString)
    arch=$(lipo -archs "$APP/Contents/MacOS/$(plist_value CFBundleExecutable)")
    [[ $arch == *" "* ]] && arch=universal2
    echo "$(dirname "$APP")/remotellm-connector-$version-macos-$arch.zip"
}

main() {
    parse_args "$@"
    require_tools
    [[ -n $OUTPUT ]] || OUTPUT=$(default_output)
    local work
    work=$(mktemp -d)
    # shellcheck disable=SC2064  # expand now: $work is local to main
    trap "rm -rf '$work'" EXIT
    sign_app
    notarize "$work/notarize.zip" "$work/notary.plist"
    staple_and_assess
    rm -f "$OUTPUT"
    # The zip Apple saw lacks the ticket; hand out one made after stapling.
    ditto -c -k --keepParent "$APP" "$OUTPUT"
    echo "$OUTPUT"
}

main "$@"
