"""One request's stream through a connector and back: the rules, the drivers that run them, and
what a stream keeps on the way (event framing, token tally, deadline, books)."""
