"""Protocol handlers: parse the request, call the content layer, answer in the protocol's
dialect. Nothing here touches storage or SQL."""
