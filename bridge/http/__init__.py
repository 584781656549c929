"""HTTP senders: the interface, the bridge's HTTP/1.1 client, the httpx reference sender, SSRF
policy."""
