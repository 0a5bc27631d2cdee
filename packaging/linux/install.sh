#!/bin/sh
# Puts the unpacked RemoteLLM connector in your application menu and on your PATH, for you
# only (no root): ~/.local/share/applications, the icon theme, ~/.local/bin.
# `./install.sh --uninstall` removes those three again (and nothing else).
set -eu

here=$(cd "$(dirname "$0")" && pwd -P)
data=${XDG_DATA_HOME:-$HOME/.local/share}
desktop=$data/applications/remotellm-connector.desktop
icon=$data/icons/hicolor/scalable/apps/remotellm.svg
link=$HOME/.local/bin/remotellm-connector

case "${1:-}" in
"") ;;
--uninstall)
    rm -f "$desktop" "$icon"
    if [ -L "$link" ]; then rm -f "$link"; fi
    echo "removed the menu entry, the icon and $link"
    exit 0
    ;;
*)
    echo "usage: $0 [--uninstall]" >&2
    exit 2
    ;;
esac

case "$here" in
*[\"\`\$\\%\|]*)
    echo "error: move the folder to a path without \" \` \$ \\ % or | first ($here)" >&2
    exit 1
    ;;
esac
if [ ! -x "$here/remotellm-connector" ]; then
    echo "error: run install.sh from the unpacked folder ($here has no remotellm-connector)" >&2
    exit 1
fi

mkdir -p "$(dirname "$desktop")" "$(dirname "$icon")" "$(dirname "$link")"
cp "$here/remotellm.svg" "$icon"
sed "s|^Exec=.*|Exec=\"$here/remotellm-connector\"|" "$here/remotellm-connector.desktop" >"$desktop"
ln -sfn "$here/remotellm-connector" "$link"
echo "installed: menu entry $desktop, command $link"
echo "start it from the menu or run: remotellm-connector"
