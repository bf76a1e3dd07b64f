// Package scenarios holds khib-vm's end-to-end scenarios, one file each; importing it registers them all.
//
// A new scenario is a file here with an init function calling
// scenario.Register. Guest scripts report figures with console lines
// "KHIBVM:key=value", which scenario.Figures collects.
package scenarios
