package main

import (
	"encoding/json"
	"reflect"
	"testing"
	"time"
)

func TestPhasesTravel(t *testing.T) {
	ps := []phase{newPhase("B: saves", 1500*time.Millisecond), newPhase("B: boots", 1234567*time.Microsecond)}
	if ps[1].S != 1.235 {
		t.Fatalf("rounded to %v, want 1.235", ps[1].S)
	}
	// Through the image's notes (a string) and through the mailbox's JSON
	// (figures come back as []any).
	var fig any
	b, _ := json.Marshal(map[string]any{"p": ps})
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	fig = m["p"]
	tests := []struct {
		name string
		in   any
		want []phase
	}{
		{"note", encodePhases(ps), ps},
		{"figure", fig, ps},
		{"missing", nil, nil},
		{"garbage text", "{not json", nil},
		{"wrong shape", map[string]any{"phase": 3}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := decodePhases(tc.in); !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("decodePhases = %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestStage1Phases(t *testing.T) {
	v := stage1Value(1950*time.Millisecond, 3*time.Millisecond)
	if v != stage1Param+"=1.950,0.003" {
		t.Fatalf("stage1Value = %q", v)
	}
	tests := []struct {
		in   string
		want []float64
	}{
		{"1.950,0.003", []float64{1.95, 0.003}},
		{"", nil},
		{"1.9", nil},
		{"a,b", nil},
		{"-1,2", nil},
	}
	for _, tc := range tests {
		got := stage1Phases(tc.in)
		if len(got) != len(tc.want) {
			t.Fatalf("stage1Phases(%q) = %+v", tc.in, got)
		}
		for i := range got {
			if got[i].S != tc.want[i] {
				t.Fatalf("stage1Phases(%q)[%d] = %v, want %v", tc.in, i, got[i].S, tc.want[i])
			}
		}
	}
}
