"""The accounts' web client (webmail), on twisted.web, served by ``webmail`` listeners.

A request passes ``mxd.webmail.site.Root`` first: the ``Host`` check (DNS rebinding), the
session cookie (else a redirect to ``/login``), and for every POST the session's CSRF
token and a same-origin check (``mxd.webui``).  Only then does a page run, with the
logged-in session in ``request.webmail`` (an ``mxd.admin.auth.Session`` whose
``account`` is the account name).

Adding a page
-------------
1. Write a ``mxd.webmail.layout.WebmailPage`` subclass in its own module: ``render_GET``
   / ``render_POST`` decorated with ``mxd.admin.render.async_render``; call
   ``self.headers(request)`` and return ``layout(title, body, request)`` (the base page
   with the navigation and the logout form).  ``await self.account(request)`` gives the
   ``Account`` (its ``id`` is the store's account id); ``self.ctx`` is the
   ``WebmailContext`` (store, directory, sasl, queue, clock, sessions, settings).
   Escape every value with ``html.escape`` (``mxd.webmail.layout.e``); every form that
   POSTs includes ``csrf_field(request)``.
2. Register it in the ``PAGES`` literal of ``mxd/webmail/site.py``: the first path
   segment maps to a factory taking the context, e.g. ``b"compose": ComposePage``.  A
   leaf page sees the rest of the path in ``request.postpath``.
3. Navigation links are the ``NAV`` literal in ``mxd/webmail/layout.py``.

Links other pages make: ``/compose`` (new message), ``/compose?reply=MAILBOX/UID`` and
``/compose?forward=MAILBOX/UID`` (from the message view; the UID follows the last ``/``,
the mailbox name is URL-encoded and may itself contain ``/``).
"""
