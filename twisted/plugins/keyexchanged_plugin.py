from twisted.application.service import ServiceMaker

keyexchange = ServiceMaker(
    "keyexchange", "keyexchanged.tap", "KX/1 RSA key-exchange daemon", "keyexchange"
)
