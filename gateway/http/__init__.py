"""HTTP plumbing both APIs share: keys, request ids and the access log, body limits, SSE framing, the page."""
