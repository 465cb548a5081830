"""Mail storage: accounts, addresses, mailboxes, messages, and the outbound queue's rows."""
