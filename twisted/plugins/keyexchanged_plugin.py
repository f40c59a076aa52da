from twisted.application.service import ServiceMaker


class _KeyexchangeMaker(ServiceMaker):
    # twistd's options are the ones that say a mistake in one line.
    @property
    def options(self):
        # The daemon's start, from here to makeService, runs without the
        # cycle collector: see keyexchanged.startup.
        from keyexchanged import startup

        startup.begin()
        from keyexchanged.tap import CommandLineOptions

        return CommandLineOptions

    def makeService(self, options):
        from keyexchanged import startup

        service = super().makeService(options)
        startup.started()
        return service


keyexchange = _KeyexchangeMaker(
    "keyexchange", "keyexchanged.tap", "KX/1 RSA key-exchange daemon", "keyexchange"
)
