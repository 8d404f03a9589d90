package launch

import (
	"net/rpc"

	"github.com/childproc/dispatcher/ipc"
	"github.com/hashicorp/go-plugin"
)

// Handshake is the go-plugin handshake of the dispatcher's workers (the
// worker's side is ipc.ServeWorker).
var Handshake = plugin.HandshakeConfig{
	ProtocolVersion:  ipc.ProtocolVersion,
	MagicCookieKey:   ipc.CookieKey,
	MagicCookieValue: ipc.CookieValue,
}

// pluginName is the one plugin a worker declares. Nothing is dispensed:
// requests travel on the slots, and the control connection only pings and
// quits.
const pluginName = "worker"

type workerPlugin struct{}

func (workerPlugin) Server(*plugin.MuxBroker) (any, error) { return nil, nil }

func (workerPlugin) Client(_ *plugin.MuxBroker, c *rpc.Client) (any, error) { return c, nil }

func pluginSet() plugin.PluginSet { return plugin.PluginSet{pluginName: workerPlugin{}} }
