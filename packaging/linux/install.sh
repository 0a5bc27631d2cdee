#!/bin/sh
# Puts the unpacked RemoteLLM connector in your application menu and on your PATH, for you
# only (no root): ~/.local/share/applications, the icon theme, ~/.local/bin.
# `./install.sh --uninstall` removes those three again (and nothing else). A command of the
# same name that is not a link to a bundle (say, from `uv tool install`) is left alone.
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
    if [ -L "$link" ] && [ "$(readlink "$link")" = "$here/remotellm-connector" ]; then
        rm -f "$link"
    fi
    echo "removed the menu entry and the icon (and $link if it pointed here)"
    exit 0
    ;;
*)
    echo "usage: $0 [--uninstall]" >&2
    exit 2
    ;;
esac

case "$here" in
*[\"\`\$\\%\|\&]*)
    echo "error: move the folder to a path without \" \` \$ \\ % | or & first ($here)" >&2
    exit 1
    ;;
esac
if [ ! -x "$here/remotellm-connector" ]; then
    echo "error: run install.sh from the unpacked folder ($here has no remotellm-connector)" >&2
    exit 1
fi

# Replace a link to a bundle (this one, or an older one); refuse anything else, such as the
# command `uv tool install` puts there.
if [ -e "$link" ] || [ -L "$link" ]; then
    if [ ! -L "$link" ] || [ ! -d "$(dirname "$(readlink "$link")")/_internal" ]; then
        echo "error: $link is another install of the connector; remove it first" >&2
        exit 1
    fi
fi

mkdir -p "$(dirname "$desktop")" "$(dirname "$icon")" "$(dirname "$link")"
cp "$here/remotellm.svg" "$icon"
sed "s|^Exec=.*|Exec=\"$here/remotellm-connector\"|" "$here/remotellm-connector.desktop" >"$desktop"
ln -sfn "$here/remotellm-connector" "$link"
echo "installed: menu entry $desktop, command $link"
echo "start it from the menu or run: remotellm-connector"
