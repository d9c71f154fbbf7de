module vireo/agent

go 1.19
