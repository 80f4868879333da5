"""IMAP: the session (framing, commands; around aioimaplib), pure wire parsing, the
MailboxReader, listing pages, CONDSTORE/QRESYNC changes, the event feed."""
