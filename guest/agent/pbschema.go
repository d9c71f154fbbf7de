package main

// The schema pbwire.go transcodes by: envd's messages as the pinned e2b SDK's descriptors have them
// (field numbers and types), named by the JSON names the handlers use.

func msg(fields ...pbField) *pbMsg { return &pbMsg{fields} }

var (
	mEmpty    = msg()
	mSelector = msg(pbField{num: 1, name: "pid", kind: kU32}, pbField{num: 2, name: "tag", kind: kString})
	mPtySize  = msg(pbField{num: 1, name: "cols", kind: kU32}, pbField{num: 2, name: "rows", kind: kU32})
	mPty      = msg(pbField{num: 1, name: "size", kind: kMsg, msg: mPtySize})
	mConfig   = msg(pbField{num: 1, name: "cmd", kind: kString}, pbField{num: 2, name: "args", kind: kString, repeated: true},
		pbField{num: 3, name: "envs", kind: kMapSS}, pbField{num: 4, name: "cwd", kind: kString})
	mInput = msg(pbField{num: 1, name: "stdin", kind: kBytes}, pbField{num: 2, name: "pty", kind: kBytes})
	mStart = msg(pbField{num: 1, name: "process", kind: kMsg, msg: mConfig}, pbField{num: 2, name: "pty", kind: kMsg, msg: mPty},
		pbField{num: 3, name: "tag", kind: kString}, pbField{num: 4, name: "stdin", kind: kBool})
	mProcReq    = msg(pbField{num: 1, name: "process", kind: kMsg, msg: mSelector})
	mSendInput  = msg(pbField{num: 1, name: "process", kind: kMsg, msg: mSelector}, pbField{num: 2, name: "input", kind: kMsg, msg: mInput})
	mStreamIn   = msg(pbField{num: 1, name: "start", kind: kMsg, msg: mProcReq}, pbField{num: 2, name: "data", kind: kMsg, msg: msg(pbField{num: 2, name: "input", kind: kMsg, msg: mInput})}, pbField{num: 3, name: "keepalive", kind: kMsg, msg: mEmpty})
	mSendSignal = msg(pbField{num: 1, name: "process", kind: kMsg, msg: mSelector}, pbField{num: 2, name: "signal", kind: kEnum, enum: signalNames})
	mUpdate     = msg(pbField{num: 1, name: "process", kind: kMsg, msg: mSelector}, pbField{num: 2, name: "pty", kind: kMsg, msg: mPty})
	mEvent      = msg(
		pbField{num: 1, name: "start", kind: kMsg, msg: msg(pbField{num: 1, name: "pid", kind: kU32})},
		pbField{num: 2, name: "data", kind: kMsg, msg: msg(pbField{num: 1, name: "stdout", kind: kBytes}, pbField{num: 2, name: "stderr", kind: kBytes}, pbField{num: 3, name: "pty", kind: kBytes})},
		pbField{num: 3, name: "end", kind: kMsg, msg: msg(pbField{num: 1, name: "exitCode", kind: kS32}, pbField{num: 2, name: "exited", kind: kBool},
			pbField{num: 3, name: "status", kind: kString}, pbField{num: 4, name: "error", kind: kString})},
		pbField{num: 4, name: "keepalive", kind: kMsg, msg: mEmpty})
	mEventRes = msg(pbField{num: 1, name: "event", kind: kMsg, msg: mEvent})
	mList     = msg(pbField{num: 1, name: "processes", kind: kMsg, repeated: true, msg: msg(pbField{num: 1, name: "config", kind: kMsg, msg: mConfig},
		pbField{num: 2, name: "pid", kind: kU32}, pbField{num: 3, name: "tag", kind: kString})})

	fileTypes  = map[string]int32{"FILE_TYPE_UNSPECIFIED": 0, "FILE_TYPE_FILE": 1, "FILE_TYPE_DIRECTORY": 2, "FILE_TYPE_SYMLINK": 3}
	eventTypes = map[string]int32{"EVENT_TYPE_UNSPECIFIED": 0, "EVENT_TYPE_CREATE": 1, "EVENT_TYPE_WRITE": 2, "EVENT_TYPE_REMOVE": 3, "EVENT_TYPE_RENAME": 4, "EVENT_TYPE_CHMOD": 5}
	mEntry     = msg(pbField{num: 1, name: "name", kind: kString}, pbField{num: 2, name: "type", kind: kEnum, enum: fileTypes},
		pbField{num: 3, name: "path", kind: kString}, pbField{num: 4, name: "size", kind: kI64}, pbField{num: 5, name: "mode", kind: kU32},
		pbField{num: 6, name: "permissions", kind: kString}, pbField{num: 7, name: "owner", kind: kString}, pbField{num: 8, name: "group", kind: kString},
		pbField{num: 9, name: "modifiedTime", kind: kTime}, pbField{num: 10, name: "symlinkTarget", kind: kString})
	mEntryRes = msg(pbField{num: 1, name: "entry", kind: kMsg, msg: mEntry})
	mPath     = msg(pbField{num: 1, name: "path", kind: kString})
	mMove     = msg(pbField{num: 1, name: "source", kind: kString}, pbField{num: 2, name: "destination", kind: kString})
	mListDir  = msg(pbField{num: 1, name: "path", kind: kString}, pbField{num: 2, name: "depth", kind: kU32})
	mListRes  = msg(pbField{num: 1, name: "entries", kind: kMsg, repeated: true, msg: mEntry})
	mWatch    = msg(pbField{num: 1, name: "path", kind: kString}, pbField{num: 2, name: "recursive", kind: kBool},
		pbField{num: 3, name: "includeEntry", kind: kBool}, pbField{num: 4, name: "allowNetworkMounts", kind: kBool})
	mFsEvent = msg(pbField{num: 1, name: "name", kind: kString}, pbField{num: 2, name: "type", kind: kEnum, enum: eventTypes},
		pbField{num: 3, name: "entry", kind: kMsg, msg: mEntry})
	mWatchRes = msg(pbField{num: 1, name: "start", kind: kMsg, msg: mEmpty}, pbField{num: 2, name: "filesystem", kind: kMsg, msg: mFsEvent},
		pbField{num: 3, name: "keepalive", kind: kMsg, msg: mEmpty})
	mWatcherID  = msg(pbField{num: 1, name: "watcherId", kind: kString})
	mWatcherEvs = msg(pbField{num: 1, name: "events", kind: kMsg, repeated: true, msg: mFsEvent})
)

// pbSchemas: each method's request and response messages.
var pbSchemas = map[string][2]*pbMsg{
	"/process.Process/Start":                  {mStart, mEventRes},
	"/process.Process/Connect":                {mProcReq, mEventRes},
	"/process.Process/List":                   {mEmpty, mList},
	"/process.Process/SendInput":              {mSendInput, mEmpty},
	"/process.Process/StreamInput":            {mStreamIn, mEmpty},
	"/process.Process/CloseStdin":             {mProcReq, mEmpty},
	"/process.Process/SendSignal":             {mSendSignal, mEmpty},
	"/process.Process/Update":                 {mUpdate, mEmpty},
	"/filesystem.Filesystem/Stat":             {mPath, mEntryRes},
	"/filesystem.Filesystem/MakeDir":          {mPath, mEntryRes},
	"/filesystem.Filesystem/Move":             {mMove, mEntryRes},
	"/filesystem.Filesystem/ListDir":          {mListDir, mListRes},
	"/filesystem.Filesystem/Remove":           {mPath, mEmpty},
	"/filesystem.Filesystem/WatchDir":         {mWatch, mWatchRes},
	"/filesystem.Filesystem/CreateWatcher":    {mWatch, mWatcherID},
	"/filesystem.Filesystem/GetWatcherEvents": {mWatcherID, mWatcherEvs},
	"/filesystem.Filesystem/RemoveWatcher":    {mWatcherID, mEmpty},
}
