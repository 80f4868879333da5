"""POP3: the asyncio client (RFC 1939, 2449, 2595, 5034) and the MailboxReader."""
