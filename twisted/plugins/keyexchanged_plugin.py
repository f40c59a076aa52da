from twisted.application.service import ServiceMaker


class _KeyexchangeMaker(ServiceMaker):
    # twistd's options are the ones that say a mistake in one line.
    @property
    def options(self):
        from keyexchanged.tap import CommandLineOptions

        return CommandLineOptions


keyexchange = _KeyexchangeMaker(
    "keyexchange", "keyexchanged.tap", "KX/1 RSA key-exchange daemon", "keyexchange"
)
