from twisted.application.service import ServiceMaker


class _KeyexchangeMaker(ServiceMaker):
    # twistd's options are the ones that say a mistake in one line.
    @property
    def options(self):
        # The daemon's modules are imported without the cycle collector,
        # and frozen before any key is read: see keyexchanged.startup.
        from keyexchanged import startup

        startup.begin()
        from keyexchanged.tap import CommandLineOptions

        startup.started()
        return CommandLineOptions


keyexchange = _KeyexchangeMaker(
    "keyexchange", "keyexchanged.tap", "KX/1 RSA key-exchange daemon", "keyexchange"
)
