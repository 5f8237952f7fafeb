

def restore_sigint() -> None:
    """``preexec_fn`` for a child that must see SIGINT: a shell's background job inherits it
    ignored, and Python then never raises KeyboardInterrupt."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
