"""Message data of an SMTP transaction: DATA (RFC 5321 §4.1.1.4), BDAT (RFC 3030), SIZE
(RFC 1870) while reading, the inbound checks seam, trace fields, and the durable commit.

250 is sent only once ``IMailStore.accept`` has made the local copies and the queue rows
durable, in one transaction (DESIGN.md "Contracts").
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from twisted.internet.defer import maybeDeferred, succeed
from twisted.python.failure import Failure as TwistedFailure

from mxd import randomids
from mxd.smtp import commands, replies
from mxd.smtp.data import (
    BareLineEndingScanner,
    DataReader,
    HeaderSection,
    Spool,
    has_field,
    has_tls_required_no,
)
from mxd.smtp.interfaces import SessionInfo, Verdict
from mxd.smtp.received import (
    TraceInfo,
    count_hops,
    date_field,
    message_id_field,
    received_field,
    with_protocol,
)
from mxd.smtp.replies import Reply
from mxd.smtp.session import SessionBase, State, Transaction
from mxd.store.interfaces import Accepted, BlobWriter, Delivery, MessageProps, OutboundMessage


class MessageMixin(SessionBase):
    """DATA and BDAT handling for ``SMTPServerProtocol``."""

    # -- DATA and BDAT ----------------------------------------------------------------

    def _with_blob(self, tx: Transaction, ready: Callable[[], None],
                   failed: Callable[[], None]) -> None:
        """Create the transaction's body file, then call ``ready`` (or ``failed``).

        With ``run_blocking`` the file is created off the reactor thread (creating a file
        can wait for the file system journal while the store fsyncs); input is paused
        meanwhile, so the message bytes that follow stay buffered."""

        def got(blob: BlobWriter) -> None:
            tx.blob = blob
            tx.queue_id = randomids.token_hex(8)
            tx.headers = HeaderSection(self.settings.max_header_size)
            ready()

        def error(f: TwistedFailure) -> None:
            self.log.failure("smtp cannot create a blob {session}", f, session=self.session_id)
            failed()

        # A file made ahead of time (the store's pool) is taken here, without a thread
        # hop; only an empty pool costs one.
        quick = self.store.new_blob_nowait()
        if quick is not None:
            got(quick)
            return
        if self.run_blocking is None:
            try:
                blob = self.store.new_blob()
            except Exception:  # noqa: BLE001 - disk full, permissions: answer 451
                error(TwistedFailure())
                return
            got(blob)
            return
        self._await(self.run_blocking(self.store.new_blob), got, error)

    def _do_data(self, cmd: commands.Data) -> None:
        tx = self.tx
        if tx is not None and tx.bdat_used:
            self._send(replies.DATA_AFTER_BDAT)
            return
        if tx is None or self.state is not State.RCPT:
            self._send(replies.NEED_RCPT if tx is not None else replies.NEED_MAIL)
            return

        def ready() -> None:
            self._reader = DataReader()
            self.state = State.DATA
            self._start_data_deadline()
            self._send(replies.START_DATA)
            self.setRawMode()

        self._with_blob(tx, ready, lambda: self._send(replies.LOCAL_ERROR))

    def _data_bytes(self, data: bytes) -> None:
        tx = self.tx
        assert tx is not None
        body, leftover = self._reader.feed(data)
        if body:
            self._body(tx, body)
        if leftover is not None:
            tx.bare_line_ending = self._reader.bare_line_ending
            self.line_mode = 1
            self._await_command()
            self._buffer = leftover + self._buffer
            self.state = State.RCPT
            self._message_complete(tx)

    def _do_bdat(self, cmd: commands.Bdat) -> None:
        tx = self.tx
        if tx is None or self.state is not State.RCPT:
            # RFC 3030 §2: without a valid transaction the chunk is still read, then refused.
            self._skip_chunk(cmd, replies.NEED_RCPT if tx is not None else replies.NEED_MAIL)
            return
        if not tx.bdat_used:
            tx.bdat_used = True
            tx.bdat_scanner = BareLineEndingScanner()

            def failed() -> None:
                self._abort_transaction()
                self._skip_chunk(cmd, replies.LOCAL_ERROR)

            self._with_blob(tx, lambda: self._start_chunk(cmd), failed)
            return
        self._start_chunk(cmd)

    def _start_chunk(self, cmd: commands.Bdat) -> None:
        self._bdat_remaining = cmd.size
        self._bdat_last = cmd.last
        self._bdat_reply = None
        self.state = State.BDAT
        if cmd.size == 0:
            self._bdat_chunk_done()
        else:
            self._start_data_deadline()
            self.setRawMode()

    def _skip_chunk(self, cmd: commands.Bdat, reply: Reply) -> None:
        self._bdat_remaining = cmd.size
        self._bdat_last = cmd.last
        self._bdat_reply = reply
        self.state = State.BDAT
        if cmd.size == 0:
            self._bdat_chunk_done()
        else:
            self._start_data_deadline()
            self.setRawMode()

    def _bdat_bytes(self, data: bytes) -> None:
        chunk, rest = data[: self._bdat_remaining], data[self._bdat_remaining :]
        self._bdat_remaining -= len(chunk)
        tx = self.tx
        if self._bdat_reply is None and tx is not None and chunk:
            assert tx.bdat_scanner is not None
            tx.bdat_scanner.feed(chunk)
            self._body(tx, chunk)
        if self._bdat_remaining == 0:
            self.line_mode = 1
            self._buffer = rest + self._buffer
            self._bdat_chunk_done()

    def _bdat_chunk_done(self) -> None:
        self.line_mode = 1
        self._await_command()
        reply = self._bdat_reply
        if reply is not None:
            self._bdat_reply = None
            if self.tx is not None and self.tx.bdat_used:
                self._abort_transaction()  # RFC 3030 §2: a failed chunk ends the transaction
            if self.tx is None:
                self.state = State.READY if self.helo is not None else State.INITIAL
            elif self.tx.recipient_count:
                self.state = State.RCPT
            else:
                self.state = State.MAIL
            self._send(reply)
            return
        tx = self.tx
        assert tx is not None
        self.state = State.RCPT
        if not self._bdat_last:
            self._send(replies.CHUNK_OK.with_text(f"{tx.size} octets received"))
            return
        assert tx.bdat_scanner is not None
        tx.bdat_scanner.finish()
        tx.bare_line_ending = tx.bdat_scanner.bare_line_ending
        self._message_complete(tx)

    def _body(self, tx: Transaction, data: bytes) -> None:
        """Message bytes (unstuffed): size check, header section, then into the blob (or
        to the check and the spool while a check runs)."""
        tx.size += len(data)
        if tx.size > self.settings.max_message_size:
            tx.too_big = True  # RFC 1870 §6: keep reading, refuse at the end
        if tx.too_big or tx.bare_line_ending or tx.too_many_hops:
            return
        assert tx.headers is not None
        if not tx.headers.complete:
            done = tx.headers.feed(data)
            if done is None:
                return
            headers, rest = done
            self._headers_complete(tx, headers, rest)
            return
        if tx.spool is not None:
            self._to_check(tx, data)
            return
        self._write(tx, data)

    def _to_check(self, tx: Transaction, data: bytes, first: bool = False) -> None:
        assert tx.spool is not None
        tx.spool.write(data)
        if first:
            data = data.removeprefix(b"\r\n")  # the empty line that ends the header section
        if tx.check is not None and data:
            try:
                tx.check.feed(data)
            except Exception:  # noqa: BLE001 - a broken check must not lose the message
                self.log.failure("smtp message check failed {session}", session=self.session_id)
                tx.check = None

    def _write(self, tx: Transaction, data: bytes) -> None:
        if tx.blob is None or not data:
            return
        try:
            tx.blob.write(data)
        except Exception:  # noqa: BLE001 - a write error answers 451 at the end
            self.log.failure("smtp blob write failed {session}", session=self.session_id)
            tx.blob.abort()
            tx.blob = None

    def _session_info(self, tx: Transaction) -> SessionInfo:
        return SessionInfo(
            role=self.role, remote_ip=self.remote_ip, helo=self.helo or "",
            mail_from=tx.mail_from,
            recipients=tuple(tx.local_addresses) + tuple(r.address for r in tx.remote),
            tls_version=self.tls_version, tls_cipher=self.tls_cipher,
            authenticated_as=self.authenticated, requiretls=tx.requiretls,
            forwarding_domain=tx.forward_domain,
        )

    def _headers_complete(self, tx: Transaction, headers: bytes, rest: bytes) -> None:
        hops = count_hops(headers)
        if hops > self.settings.max_hops:
            # RFC 5321 §6.3: a loop; read the rest, then refuse (554 5.4.6).
            self.log.info("smtp message with {hops} Received fields refused {session}",
                          hops=hops, session=self.session_id)
            tx.too_many_hops = True
            return
        if self.role != "smtp":
            headers = self._submission_fields(tx, headers)
        tx.header_bytes = headers
        # The message-check seam: SPF/DKIM/DMARC/iprev on port 25, DKIM signing on
        # submission. It decides at the end of the data; the body waits in a spool.
        check = None
        try:
            check = self.checker.begin(self._session_info(tx), headers)
        except Exception:  # noqa: BLE001 - a broken check must not lose the message
            self.log.failure("smtp message check failed {session}", session=self.session_id)
        if check is None:
            self._write_prefix(tx, headers, [], rest)
            return
        tx.check = check
        tx.spool = Spool()
        self._to_check(tx, rest, first=True)

    def _submission_fields(self, tx: Transaction, headers: bytes) -> bytes:
        """RFC 6409 §8.2, §8.3: a submission server may add Date and Message-ID (before
        signing, so that the signature covers them)."""
        now = datetime.fromtimestamp(self.clock.seconds(), UTC)
        if not has_field(headers, "Date"):
            headers += date_field(now)
        if not has_field(headers, "Message-ID"):
            headers += message_id_field(f"{tx.queue_id}.{randomids.token_hex(4)}", self.hostname)
        return headers

    def _finish_check(self, tx: Transaction) -> None:
        """The end of the data while a check runs: wait for its verdict (input paused),
        then write trace fields, the check's fields, the headers and the spooled body."""
        check = tx.check
        tx.check = None

        def decided(verdict: Verdict) -> None:
            if tx is not self.tx or self.state is State.CLOSED:
                return
            if verdict.reject is not None:
                self._fail_message(tx, verdict.reject, "policy")
                return
            headers = (verdict.header_section if verdict.header_section is not None
                       else tx.header_bytes)
            self._write_prefix(tx, headers, list(verdict.fields), b"", verdict.remote_host)
            if verdict.mailbox:
                tx.mailbox = verdict.mailbox
            spool, tx.spool = tx.spool, None
            blob = tx.blob
            if spool is None or blob is None or not spool.on_disk or self.run_blocking is None:
                if spool is not None:
                    spool.copy_to(lambda data: self._write(tx, data))
                    spool.close()
                self._commit_written(tx)
                return
            # A body big enough to have gone to a file is copied off the reactor thread
            # (input stays paused meanwhile, so pipelined commands wait).
            def copy() -> None:
                try:
                    spool.copy_to(blob.write)
                finally:
                    spool.close()

            def copy_failed(f: TwistedFailure) -> None:
                self.log.failure("smtp blob write failed {session}", f, session=self.session_id)
                blob.abort()
                tx.blob = None
                self._commit_written(tx)

            d2 = self.run_blocking(copy)
            if not d2.called:
                self.pauseProducing()
            d2.addCallbacks(lambda _: self._commit_written(tx), copy_failed)

        def failed(f: TwistedFailure) -> None:
            self.log.failure("smtp message check failed {session}", f, session=self.session_id)
            decided(Verdict())

        d = maybeDeferred(check.finish) if check is not None else succeed(Verdict())
        if not d.called:  # a verdict already there is used at once, without pausing
            self.pauseProducing()
        d.addCallbacks(decided, failed)
        d.addErrback(lambda f: self.log.failure("smtp after checks {session}", f,
                                                session=self.session_id))

    def _write_prefix(self, tx: Transaction, headers: bytes, extra: list[str], rest: bytes,
                      remote_host: str | None = None) -> None:
        now = datetime.fromtimestamp(self.clock.seconds(), UTC)
        rcpts = tx.local_addresses + [r.address for r in tx.remote]
        trace = TraceInfo(
            helo=self.helo or "unknown", remote_ip=self.remote_ip, remote_host=remote_host,
            by_host=self.hostname,
            protocol=with_protocol(extended=self.extended, tls=self.tls_active,
                                   authenticated=self.authenticated is not None,
                                   smtputf8=tx.smtputf8),
            queue_id=tx.queue_id, when=now, tls_version=self.tls_version,
            tls_cipher=self.tls_cipher, recipient=rcpts[0] if len(rcpts) == 1 else None,
            requiretls=tx.requiretls,
        )
        parts = [received_field(trace)]
        parts.extend(line.encode("utf-8") + b"\r\n" for line in extra)
        parts.append(headers)
        parts.append(rest)
        self._write(tx, b"".join(parts))

    def _commit_written(self, tx: Transaction) -> None:
        if tx is not self.tx or self.state is State.CLOSED:
            return
        blob = tx.blob
        if blob is None:
            self._fail_message(tx, replies.LOCAL_ERROR, "write_error")
            return
        self._commit(tx, blob)

    def _message_complete(self, tx: Transaction) -> None:
        """End of DATA or of the last BDAT chunk: check, make durable, answer."""
        if tx.too_big:
            self._fail_message(tx, replies.MESSAGE_TOO_BIG, "too_big")
            return
        if tx.bare_line_ending:
            self._fail_message(tx, replies.BARE_LINEFEED_DATA, "bare_line_ending")
            return
        assert tx.headers is not None
        if tx.headers.overflow:
            self._fail_message(tx, replies.HEADER_TOO_BIG, "header_too_big")
            return
        if not tx.headers.complete:
            headers = tx.headers.finish()
            self._headers_complete(tx, headers, b"")
        if tx.too_many_hops:
            self._fail_message(tx, replies.TOO_MANY_HOPS, "too_many_hops")
            return
        if tx.spool is not None:
            self._finish_check(tx)
            return
        blob = tx.blob
        if blob is None:
            self._fail_message(tx, replies.LOCAL_ERROR, "write_error")
            return
        self._commit(tx, blob)

    def _fail_message(self, tx: Transaction, reply: Reply, reason: str) -> None:
        self.log.info("smtp message rejected {session} reason={reason}",
                      session=self.session_id, reason=reason)
        self.metrics.inc("smtp_rejected_total", role=self.role, reason=reason)
        self._abort_transaction()
        self.state = State.READY
        self._send(reply)
        self._resume()

    def _commit(self, tx: Transaction, blob: BlobWriter) -> None:
        """Accept the message in one store transaction: local copies and queue rows.

        RFC 5321 §4.1.1.4 / DESIGN.md "Contracts": 250 only once all of it is durable; a
        crash before then leaves none of it, so the client's retry delivers it once."""
        props = MessageProps(
            requiretls=tx.requiretls, tls_required_no=has_tls_required_no(tx.header_bytes),
            mail_from=tx.mail_from,
            received_via=with_protocol(extended=self.extended, tls=self.tls_active,
                                       authenticated=self.authenticated is not None,
                                       smtputf8=tx.smtputf8),
        )
        targets = [Delivery(account_id=aid, mailbox=tx.mailbox) for aid in tx.local]
        outbound = None
        if tx.remote:
            mail_from = tx.mail_from
            if tx.forward_domain is not None and self.role == "smtp" and self.forwarder:
                # Forwarded mail leaves with an SRS sender of the forwarding domain
                # (mxd.forwarding); on submission the user's own address stays.
                mail_from = self.forwarder.envelope_sender(mail_from, tx.forward_domain)
            outbound = OutboundMessage(
                mail_from=mail_from, recipients=tuple(tx.remote), ret=tx.ret,
                envid=tx.envid, requiretls=tx.requiretls,
                tls_required_no=props.tls_required_no, smtputf8=tx.smtputf8, body=tx.body,
                sender_account=self.authenticated, size=tx.size,
            )
        # From here on the store owns the body file: a client vanishing now must not
        # abort a file the store's writer thread may be making durable.
        tx.blob = None
        d = maybeDeferred(self.store.accept, blob, targets, props, outbound, tx.queue_id)

        def done(_: Accepted) -> None:
            if outbound is not None and self.outbound is not None:
                self.outbound.wake()
            self.transactions += 1
            self.log.info(
                "smtp accepted {queue_id} {session} from={mail_from} local={local} "
                "remote={remote} size={size} requiretls={requiretls}",
                queue_id=tx.queue_id, session=self.session_id, mail_from=tx.mail_from,
                local=len(targets), remote=len(tx.remote), size=tx.size,
                requiretls=tx.requiretls,
            )
            self.metrics.inc("smtp_accepted_total", role=self.role)
            self.tx = None
            self.state = State.READY
            self._send(replies.MESSAGE_ACCEPTED.with_text(f"Message accepted as {tx.queue_id}"))

        def failed(f: TwistedFailure) -> None:
            # Nothing is stored: the store drops a body it refused; one it was never
            # handed (refused before that) is dropped here (abort does nothing otherwise).
            self.log.failure("smtp commit failed {queue_id} {session}", f,
                             queue_id=tx.queue_id, session=self.session_id)
            try:
                blob.abort()
            except Exception:  # noqa: BLE001
                self.log.failure("smtp blob abort failed {session}", session=self.session_id)
            self.metrics.inc("smtp_rejected_total", role=self.role, reason="store_error")
            self._abort_transaction()
            self.state = State.READY
            self._send(replies.LOCAL_ERROR)

        self._await(d, done, failed)
