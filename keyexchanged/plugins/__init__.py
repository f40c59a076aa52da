"""Application plugins for keyexchanged (see keyexchanged.interfaces).

Any directory named ``keyexchanged/plugins`` on ``sys.path`` adds to this
package, as ``twisted/plugins`` does for Twisted: another distribution can
install an application without touching this one.
"""

from twisted.plugin import pluginPackagePaths

__path__.extend(pluginPackagePaths(__name__))
__all__ = []
