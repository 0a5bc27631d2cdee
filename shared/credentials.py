"""Which request headers carry a client's credentials, and text stripped of them.

The broker drops these headers before a request crosses the relay (the user's key must
never reach a connector or the LLM server), and the logging setup scrubs them out of
any text it writes: an HTTP parser's error quotes the raw header line it refused, and
that line can hold a valid key.
"""

from __future__ import annotations

import re
from typing import Final

CREDENTIAL_HEADERS: Final = frozenset(
    {
        "authorization",  # OpenAI, Mistral, Cohere, Groq, Vertex, LiteLLM and most others
        "proxy-authorization",
        "x-api-key",  # Anthropic
        "api-key",  # Azure OpenAI
        "x-goog-api-key",  # Google Gemini
        "ocp-apim-subscription-key",  # Azure API Management in front of a model
        "x-litellm-api-key",  # LiteLLM proxy
        "cf-aig-authorization",  # Cloudflare AI Gateway
        "x-auth-token",
        "cookie",
    }
)
"""Lower-case names of the headers a client may send a secret in (the SDKs' conventions)."""

# A header line as an HTTP parser quotes it (`Authorization: Bearer sk-…`, maybe with a control
# byte shown escaped in the name), up to the end of the line.
_HEADER_LINE: Final = re.compile(
    r"(?i)(?<![\w-])("
    + "|".join(re.escape(name) for name in sorted(CREDENTIAL_HEADERS, key=len, reverse=True))
    + r")([^:\r\n]{0,16}):[^\r\n]*"
)
_SCHEME: Final = re.compile(r"(?i)\b(bearer|basic)\s+[^\s'\"]+")


def scrub(text: str) -> str:
    """`text` with every credential header's value, and any `Bearer`/`Basic` secret, masked."""
    if ":" not in text and " " not in text:
        return text
    text = _HEADER_LINE.sub(r"\1\2: ***", text)
    return _SCHEME.sub(r"\1 ***", text)
